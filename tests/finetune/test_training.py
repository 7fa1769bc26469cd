"""Fine-tuning on the shipped Shakespeare QA set: full and LoRA lower the held-out loss; the result
reloads and answers through pipeline("text-generation") with the chat template."""
import pytest
import torch

from spikelm.finetune import InstructionDataset, apply_lora, response_loss, save_merged, shakespeare_qa_path

from .conftest import MAX_LEN

STEPS = 30


def _finetune(model, tok, lr: float) -> tuple[float, float]:
    """``STEPS`` AdamW steps on packed rows of the train split; (val loss before, after)."""
    train = InstructionDataset(shakespeare_qa_path("train"), tok, max_length=MAX_LEN, packing="pack")
    val = InstructionDataset(shakespeare_qa_path("val"), tok, max_length=MAX_LEN, packing="pad")
    before = response_loss(model, val, batch_size=len(val))
    assert before["tokens"] == val.num_target_tokens() and before["tokens"] > 300
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    model.train()
    step = 0
    while step < STEPS:
        for batch in loader:
            loss = model(**batch, use_cache=False).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == STEPS:
                break
    after = response_loss(model, val, batch_size=len(val))
    return before["loss"], after["loss"]


def test_full_finetuning_lowers_validation_loss_and_the_model_reloads_and_answers(tok, pretrained, tmp_path):
    before, after = _finetune(pretrained, tok, lr=5e-3)
    print(f"full fine-tuning: val loss {before:.3f} -> {after:.3f}")  # measured: 5.155 -> 3.543
    assert after < before - 0.8, (before, after)

    from transformers import pipeline

    out = tmp_path / "ft"
    pretrained.save_pretrained(out)
    tok.save_pretrained(out)
    pipe = pipeline("text-generation", model=str(out))
    assert pipe.tokenizer.chat_template == tok.chat_template  # the template travels with the model
    question = [{"role": "user", "content": 'Who says: "To think upon you."?'}]
    res = pipe(question, max_new_tokens=12, do_sample=False)
    chat = res[0]["generated_text"]
    assert chat[:-1] == question and chat[-1]["role"] == "assistant"
    # the answer is what greedy decoding from the chat prompt gives, cut at the eos
    ids = tok.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    model = pipe.model.eval()
    gen = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in gen:
        gen = gen[:gen.index(tok.eos_token_id)]
    assert chat[-1]["content"] == tok.decode(gen, skip_special_tokens=True)


def test_lora_finetuning_lowers_validation_loss_and_exports(tok, pretrained, tmp_path):
    model = apply_lora(pretrained, r=8, alpha=16)
    before, after = _finetune(model, tok, lr=2e-2)
    print(f"LoRA fine-tuning: val loss {before:.3f} -> {after:.3f}")  # measured: 5.155 -> 4.294
    assert after < before - 0.4, (before, after)
    out = save_merged(model, tok, tmp_path / "merged")

    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(out))
    res = pipe([{"role": "user", "content": 'Who says: "To think upon you."?'}], max_new_tokens=8, do_sample=False)
    assert res[0]["generated_text"][-1]["role"] == "assistant"
    val = InstructionDataset(shakespeare_qa_path("val"), tok, max_length=MAX_LEN)
    assert response_loss(pipe.model, val, batch_size=len(val))["loss"] == pytest.approx(after, abs=1e-4)
