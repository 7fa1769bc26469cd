"""Fine-tuning through the training loop: instruction data (masked loss), full and LoRA, merged export, CLI."""
import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from spikelm.finetune import InstructionDataset, ensure_chat_template, merge_adapter_dir, response_loss, \
    shakespeare_qa_path
from spikelm.train.config import DataConfig, LoraConfig, ModelConfig, OptimConfig, Recipe, TrainConfig
from spikelm.train.trainer import train

from .conftest import train_debug_model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A spikelm debug model (context 128) trained a few steps on the test corpus, and the masked
    loss of the held-out Shakespeare QA answers under it (spikelm.finetune.response_loss)."""
    final = train_debug_model(tmp_path_factory.mktemp("base"), block_size=128, max_steps=3, warmup_steps=1) / "final"
    tok = ensure_chat_template(AutoTokenizer.from_pretrained(final))
    val = InstructionDataset(shakespeare_qa_path("val"), tok, max_length=128)
    return final, response_loss(AutoModelForCausalLM.from_pretrained(final), val)["loss"]


def _ft_recipe(base_dir, run_dir, lora=None, lr=1e-2, **train_kw):
    kw = dict(run_dir=str(run_dir), max_steps=8, micro_batch_size=4, eval_every=4, checkpoint_every=4, log_every=1,
              sample_tokens=0, threads=1)
    kw.update(train_kw)
    return Recipe(model=ModelConfig(init_from=str(base_dir), lora=lora or LoraConfig()),
                  data=DataConfig(format="instructions", train_files=["builtin:shakespeare-qa/train.jsonl"],
                                  val_files=["builtin:shakespeare-qa/val.jsonl"], block_size=128),
                  optim=OptimConfig(lr=lr, warmup_steps=1), train=TrainConfig(**kw))


def _recs(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_full_finetuning_lowers_the_held_out_answer_loss(base, tmp_path, capsys):
    base_dir, before = base
    summary = train(_ft_recipe(base_dir, tmp_path / "ft"))
    # the loop's validation is the masked loss on the held-out answers: the same number
    # spikelm.finetune.response_loss gives for the exported model
    tok = AutoTokenizer.from_pretrained(tmp_path / "ft" / "final")
    val = InstructionDataset(shakespeare_qa_path("val"), tok, max_length=128)
    after = response_loss(AutoModelForCausalLM.from_pretrained(tmp_path / "ft" / "final"), val)
    assert summary["val"]["tokens"] == after["tokens"]
    assert summary["val"]["loss"] == pytest.approx(after["loss"], abs=1e-4)
    assert summary["val"]["loss"] < before - 0.5, (before, summary["val"])
    assert summary["trainable_parameters"] == summary["parameters"]
    assert tok.chat_template  # the template the data was rendered with ships with the model
    # `spikelm generate --chat`: the question as a user message, only the reply printed; the
    # same text as the pipeline on a messages list
    from transformers import pipeline

    from spikelm.cli import main

    q = "Who says: \"To think upon you.\"?"
    pipe = pipeline("text-generation", model=str(tmp_path / "ft" / "final"))
    want = pipe([{"role": "user", "content": q}], max_new_tokens=8, do_sample=False)[0]["generated_text"][-1]["content"]
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "ft" / "final"), q, "--chat", "--greedy", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip() == want.strip()


def test_lora_trains_only_adapters_merges_and_resumes(base, tmp_path):
    base_dir, before = base
    lora = LoraConfig(r=4, alpha=8, target_modules=["key", "value", "receptance"])
    run = tmp_path / "lora"
    steps = dict(max_steps=6, eval_every=3, checkpoint_every=3)
    summary = train(_ft_recipe(base_dir, run, lora=lora, lr=5e-2, **steps))
    assert summary["val"]["loss"] < before - 0.1, (before, summary["val"])
    assert _recs(run)[-1]["spike_rate"] is not None  # read through the peft wrapper
    # adapters only: 3 targets x 2 layers x ... of A [4, in] + B [out, 4]
    src = AutoModelForCausalLM.from_pretrained(base_dir)
    lin = {n: m for n, m in src.named_modules() if n.rsplit(".", 1)[-1] in ("key", "value", "receptance")}
    assert summary["trainable_parameters"] == sum(4 * (m.in_features + m.out_features) for m in lin.values())
    merged = AutoModelForCausalLM.from_pretrained(run / "final")
    assert type(merged).__name__ == "SpikeLMForCausalLM"
    before_sd, after_sd = src.state_dict(), merged.state_dict()
    assert before_sd.keys() == after_sd.keys()
    for name, w in before_sd.items():
        if name.rsplit(".", 1)[0] in lin:
            assert not torch.equal(w, after_sd[name]), name  # W + alpha/r B A
        else:
            assert torch.equal(w, after_sd[name]), name  # frozen: embeddings, norms, neurons, head, decays
    # the adapter alone, merged onto the base it names, gives the same model
    # (`spikelm export ADAPTER OUT --merge-lora`, base from adapter_config.json; the same as
    # merge_adapter_dir with an explicit base)
    from spikelm.cli import main

    assert main(["export", str(run / "final" / "adapter"), str(tmp_path / "m"), "--merge-lora"]) == 0
    assert (tmp_path / "m" / "README.md").is_file() and "auto_map" in (tmp_path / "m" / "config.json").read_text()
    remerged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    explicit = AutoModelForCausalLM.from_pretrained(merge_adapter_dir(run / "final" / "adapter", base_dir,
                                                                      tmp_path / "m2"))
    ids = torch.randint(0, 280, (2, 20))
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, remerged(ids).logits, atol=1e-5)
        assert torch.equal(remerged(ids).logits, explicit(ids).logits)
    # the merged directory generates through the HF pipeline with its chat template
    pipe = pipeline("text-generation", model=str(run / "final"))
    prompt = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "Who says: \"Speak, speak.\"?"}],
                                                tokenize=False, add_generation_prompt=True)
    out = pipe(prompt, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert out.startswith(prompt) and len(out) > len(prompt)
    # resume after the step-3 checkpoint: the same losses (adapters and optimizer state restored)
    full = _recs(run)
    shutil.rmtree(run / "checkpoints" / "step6")
    shutil.rmtree(run / "final")
    (run / "checkpoints" / "latest").write_text("step3")
    train(_ft_recipe(base_dir, run, lora=lora, lr=5e-2, **steps), resume=True)
    assert [r["loss"] for r in _recs(run)] == pytest.approx([r["loss"] for r in full], abs=1e-6)
    assert (run / "final" / "adapter" / "adapter_model.safetensors").is_file()


def test_packed_rows_and_a_split_off_validation(base, tmp_path):
    r = _ft_recipe(base[0], tmp_path / "pack", max_steps=2, eval_every=0, checkpoint_every=0)
    r.data.packing, r.data.val_files, r.data.val_fraction = "pack", None, 0.2
    summary = train(r)
    tok = AutoTokenizer.from_pretrained(tmp_path / "pack" / "final")
    from spikelm.finetune import read_jsonl

    recs = read_jsonl(shakespeare_qa_path("train"))[0]
    val = InstructionDataset(recs[-40:], tok, max_length=128, packing="pack")  # the last 20% of 200
    assert len(val) < 40 and summary["val"]["tokens"] == val.num_target_tokens()
    assert summary["val"]["loss"] == pytest.approx(response_loss(
        AutoModelForCausalLM.from_pretrained(tmp_path / "pack" / "final"), val)["loss"], abs=1e-4)


def test_instruction_data_errors(base, tmp_path):
    r = _ft_recipe(base[0], tmp_path / "bad")
    r.data.train_files = [str(tmp_path / "plain.txt")]
    (tmp_path / "plain.txt").write_text("not jsonl\n")
    with pytest.raises(ValueError, match="jsonl"):
        train(r)
    assert not (tmp_path / "bad").exists()


def test_finetune_cli(base, tmp_path, capsys):
    from spikelm.cli import CLIError
    from spikelm.cli.finetune import cmd_finetune

    with pytest.raises(CLIError, match="does not exist"):
        cmd_finetune([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CLIError, match="no config.json"):
        cmd_finetune([str(tmp_path / "empty")])
    with pytest.raises(CLIError, match="Hub model id.*offline"):  # a Hub id: tests run offline
        cmd_finetune(["someone/some-spiking-model"])
    with pytest.raises(CLIError, match="init_from"):
        cmd_finetune([str(base[0]), "--model.init_from=x"])
    run = tmp_path / "cli"
    assert cmd_finetune([str(base[0]), "finetune-shakespeare-qa-lora", f"--train.run_dir={run}", "--train.max_steps=2",
                         "--train.micro_batch_size=2", "--train.eval_every=0", "--train.checkpoint_every=0",
                         "--train.eval_max_batches=2", "--train.sample_tokens=3",
                         "--train.threads=1"]) == 0
    assert "validation loss" in capsys.readouterr().out
    saved = json.loads((run / "recipe.json").read_text())
    assert saved["model"]["init_from"] == str(base[0]) and saved["model"]["lora"]["r"] == 16
    assert json.loads((run / "final" / "adapter" / "adapter_config.json").read_text())["r"] == 16


def test_every_answer_token_of_a_step_weighs_the_same(base, tmp_path):
    """With gradient accumulation the micro-batches hold different numbers of answer tokens; the
    step's loss (and gradient) is the mean over all of them, not the mean of micro-batch means."""
    from spikelm.data.batches import batch_targets as _targets, make_batch
    from spikelm.train.schedule import BatchOrder

    base_dir, _ = base
    r = _ft_recipe(base_dir, tmp_path / "acc", max_steps=1, micro_batch_size=2, grad_accum=4, eval_every=0,
                   checkpoint_every=0)
    train(r)
    first = _recs(tmp_path / "acc")[0]["loss"]
    tok = ensure_chat_template(AutoTokenizer.from_pretrained(base_dir))
    ds = InstructionDataset(shakespeare_qa_path("train"), tok, max_length=128)
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    idx = BatchOrder(len(ds), 8, r.train.seed).global_indices(0)
    sums, counts, means = 0.0, 0, []
    with torch.no_grad():
        for mb in (idx[i:i + 2] for i in range(0, 8, 2)):
            b = make_batch(ds, mb, "cpu")
            targets, pos = _targets(b)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, pos]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                    ignore_index=-100, reduction="sum").item()
            n = int((targets != -100).sum())
            sums, counts = sums + nll, counts + n
            means.append(nll / n)
    assert first == pytest.approx(sums / counts, rel=1e-4)
    assert abs(sums / counts - sum(means) / len(means)) > 1e-3  # the two weightings differ here
