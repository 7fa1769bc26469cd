"""SpikeLMForSequenceClassification: last-real-token pooling under left/right padding, the loss of each
problem_type, loading from causal-LM (and converted Llama) directories, save/load, pipeline labels,
LoRA merge, and the remote code of an exported classifier."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, pipeline

from spikelm import SpikeLMForCausalLM, SpikeLMForSequenceClassification, flavour_config
from spikelm.models.classification import last_token_index

from .conftest import spiking_weights

LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def classifier(flavour: str = "debug", vocab: int = 64, **kw) -> SpikeLMForSequenceClassification:
    torch.manual_seed(0)
    cfg = flavour_config(flavour, vocab_size=vocab, num_labels=3, id2label=LABELS, **kw)
    return spiking_weights(SpikeLMForSequenceClassification(cfg)).eval()


def pad(seqs: list[list[int]], side: str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(map(len, seqs))
    rows = [([pad_id] * (n - len(s)) + s) if side == "left" else (s + [pad_id] * (n - len(s))) for s in seqs]
    mask = [([0] * (n - len(s)) + [1] * len(s)) if side == "left" else ([1] * len(s) + [0] * (n - len(s)))
            for s in seqs]
    return torch.tensor(rows), torch.tensor(mask)


SEQS = [[5, 9, 3, 7, 1, 4, 8], [2, 6], [11, 12, 13, 14]]


def test_last_token_index():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(mask, None, None, 4).tolist() == [3, 2, 0, 3]
    ids = torch.tensor([[7, 8, 0, 0], [0, 0, 5, 6]])
    assert last_token_index(None, ids, 0, 2).tolist() == [1, 3]
    assert last_token_index(None, ids, None, 1) == -1
    with pytest.raises(ValueError, match="attention_mask or a pad_token_id"):
        last_token_index(None, ids, None, 2)


@pytest.mark.parametrize("flavour", ["debug", "hybrid-debug"])
def test_pooling_left_and_right_padding_equals_each_sequence_alone(flavour):
    m = classifier(flavour, pad_token_id=0)
    with torch.no_grad():
        alone = torch.cat([m(input_ids=torch.tensor([s])).logits for s in SEQS])
        for side in ("left", "right"):
            ids, mask = pad(SEQS, side, pad_id=0)
            got = m(input_ids=ids, attention_mask=mask).logits
            torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
        # no mask: the rightmost non-pad token (right padding; pads at the end never reach it)
        ids, _ = pad(SEQS, "right", pad_id=0)
        torch.testing.assert_close(m(input_ids=ids).logits, alone, rtol=1e-5, atol=1e-5)
        # hand check: the score head applied to the backbone's hidden state at the last real position
        ids, mask = pad(SEQS, "right", pad_id=0)
        h = m.model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = m.score(h[torch.arange(3), torch.tensor([6, 1, 3])])
        torch.testing.assert_close(m(input_ids=ids, attention_mask=mask).logits, want)
    assert alone.shape == (3, 3)


def test_losses_match_hand_computation():
    ids, mask = pad(SEQS, "left", pad_id=0)
    m = classifier()
    logits = m(input_ids=ids, attention_mask=mask).logits.detach()
    y = torch.tensor([2, 0, 1])
    out = m(input_ids=ids, attention_mask=mask, labels=y)
    assert m.config.problem_type == "single_label_classification"  # chosen from int labels, as transformers
    torch.testing.assert_close(out.loss, -logits.log_softmax(-1)[torch.arange(3), y].mean())
    y_ign = torch.tensor([2, -100, 1])  # -100 ignored
    torch.testing.assert_close(m(input_ids=ids, attention_mask=mask, labels=y_ign).loss,
                               -logits.log_softmax(-1)[[0, 2], [2, 1]].mean())

    m = classifier()
    yb = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = m(input_ids=ids, attention_mask=mask, labels=yb)
    assert m.config.problem_type == "multi_label_classification"
    p = torch.sigmoid(logits)
    torch.testing.assert_close(out.loss, -(yb * p.log() + (1 - yb) * (1 - p).log()).mean())

    torch.manual_seed(0)
    r = spiking_weights(SpikeLMForSequenceClassification(flavour_config("debug", vocab_size=64, num_labels=1))).eval()
    pred = r(input_ids=ids, attention_mask=mask).logits.detach()
    yr = torch.tensor([0.5, -1.0, 2.0])
    out = r(input_ids=ids, attention_mask=mask, labels=yr)
    assert r.config.problem_type == "regression" and pred.shape == (3, 1)
    torch.testing.assert_close(out.loss, ((pred[:, 0] - yr) ** 2).mean())
    out.loss.backward()  # trains end to end
    assert r.score.weight.grad is not None and r.model.embeddings.weight.grad is not None


def test_label_outside_num_labels_is_one_clear_error():
    m = classifier()
    ids, mask = pad(SEQS, "right", pad_id=0)
    with pytest.raises(ValueError, match=r"label 3 is outside \[0, num_labels=3\)"):
        m(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match=r"label -1 is outside \[0, num_labels=3\)"):
        m(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, -1, 1]))
    m.config.problem_type = "multi_label_classification"
    with pytest.raises(ValueError, match=r"shape \[3, num_labels=3\]"):
        m(input_ids=ids, attention_mask=mask, labels=torch.ones(3, 2))


@pytest.mark.parametrize("flavour", ["debug", "hybrid-debug"])
def test_from_causal_lm_dir_reuses_backbone_and_save_load_round_trips(flavour, tmp_path, caplog):
    torch.manual_seed(0)
    lm = spiking_weights(SpikeLMForCausalLM(flavour_config(flavour, vocab_size=64))).eval()
    lm.save_pretrained(tmp_path / "lm")
    m, info = SpikeLMForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=3, id2label=LABELS,
                                                               output_loading_info=True)
    assert info["missing_keys"] == {"score.weight"} or set(info["missing_keys"]) == {"score.weight"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    lm_sd = lm.model.state_dict()
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, lm_sd[k]), k
    assert m.config.id2label == LABELS and m.config.num_labels == 3
    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=3)
    assert type(auto) is SpikeLMForSequenceClassification

    m.eval().save_pretrained(tmp_path / "cls")
    back = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls").eval()
    assert type(back) is SpikeLMForSequenceClassification and back.config.id2label == LABELS
    ids, mask = pad(SEQS, "left", pad_id=0)
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids, attention_mask=mask).logits, m(input_ids=ids, attention_mask=mask).logits)


def test_from_converted_llama_dir(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from spikelm.convert import convert_checkpoint
    from spikelm.data import train_bpe_tokenizer_from_iterator

    tok = train_bpe_tokenizer_from_iterator(["the quick brown fox jumps over the lazy dog. " * 8], vocab_size=280,
                                            model_max_length=32)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                         bos_token_id=None, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id))
    llama.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    convert_checkpoint(tmp_path / "llama", tmp_path / "conv", layout="hybrid")
    lm = SpikeLMForCausalLM.from_pretrained(tmp_path / "conv")
    m, info = SpikeLMForSequenceClassification.from_pretrained(tmp_path / "conv", num_labels=2,
                                                               output_loading_info=True)
    assert set(info["missing_keys"]) == {"score.weight"} and not info["unexpected_keys"]
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, lm.model.state_dict()[k]), k


@pytest.fixture(scope="module")
def tok():
    from spikelm.data import train_bpe_tokenizer_from_iterator

    return train_bpe_tokenizer_from_iterator(["great film, loved it. ", "awful plot, boring. ", "it was fine. "] * 20,
                                             vocab_size=280, model_max_length=32)


def test_pipeline_returns_label_names(tok, tmp_path):
    m = classifier(vocab=len(tok), pad_token_id=tok.pad_token_id)
    m.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    clf = pipeline("text-classification", model=str(tmp_path), device="cpu")
    out = clf(["great film, loved it.", "boring"], top_k=None)
    assert len(out) == 2 and {d["label"] for d in out[0]} == set(LABELS.values())
    ids = tok(["great film, loved it."], return_tensors="pt")
    with torch.no_grad():
        probs = F.softmax(m(**ids).logits[0], -1)
    best = clf("great film, loved it.")[0]
    assert best["label"] == LABELS[int(probs.argmax())]
    assert best["score"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_lora_merge_gives_the_unmerged_logits():
    from peft import LoraConfig, TaskType, get_peft_model

    m = classifier("hybrid-debug", pad_token_id=0)
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     modules_to_save=["score"])
    pm = get_peft_model(m, cfg)
    with torch.no_grad():  # non-zero adapters and a changed head, as after training
        for n, p in pm.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.normal_(0, 0.3)
    assert any("score" in n and p.requires_grad for n, p in pm.named_parameters())
    ids, mask = pad(SEQS, "left", pad_id=0)
    pm.eval()
    with torch.no_grad():
        base = pm.get_base_model()
        want = pm(input_ids=ids, attention_mask=mask).logits
        merged = pm.merge_and_unload()
        got = merged(input_ids=ids, attention_mask=mask).logits
    assert type(merged) is SpikeLMForSequenceClassification and base is merged
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


CHILD = r'''
import json, sys
sys.modules["triton"] = None
try:
    import spikelm  # noqa: F401
    importable = True
except ImportError:
    importable = False
import torch
from transformers import AutoModelForSequenceClassification
m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
r = torch.load(sys.argv[2])
with torch.no_grad():
    logits = m(input_ids=r["ids"], attention_mask=r["mask"]).logits
print("RESULT " + json.dumps({"importable": importable, "module": type(m).__module__,
                              "labels": m.config.id2label, "max_diff": (logits - r["logits"]).abs().max().item()}))
'''


def test_exported_classifier_loads_with_trust_remote_code_without_spikelm(tok, tmp_path):
    from spikelm.hub import write_hf_extras

    from ..hub.test_remote_code import clean_sys_path

    m = classifier("hybrid-debug", vocab=len(tok), pad_token_id=tok.pad_token_id)
    d = tmp_path / "export"
    m.save_pretrained(d)
    tok.save_pretrained(d)
    write_hf_extras(d)
    assert {p.name for p in d.glob("*.py")} == {"configuration_spikelm.py", "modeling_spikelm.py", "classification.py"}
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForSequenceClassification"] == "classification.SpikeLMForSequenceClassification"
    ids, mask = pad(SEQS, "left", pad_id=tok.pad_token_id)
    with torch.no_grad():
        logits = m(input_ids=ids, attention_mask=mask).logits
    torch.save({"ids": ids, "mask": mask, "logits": logits}, tmp_path / "ref.pt")
    (tmp_path / "child.py").write_text(CHILD)
    paths = clean_sys_path(tmp_path)
    boot = f"import sys; sys.path[:0] = {paths!r}; sys.argv = sys.argv[1:]; exec(open(sys.argv[0]).read())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    run = subprocess.run([sys.executable, "-I", "-S", "-c", boot, str(tmp_path / "child.py"), str(d),
                          str(tmp_path / "ref.pt")], check=False, cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert res["importable"] is False and res["module"].endswith(".classification")
    assert res["labels"] == {str(k): v for k, v in LABELS.items()} and res["max_diff"] < 1e-5

    # a causal LM's export keeps its two files; re-exporting it removes the classifier's third
    lm = SpikeLMForCausalLM(m.config)
    lm.config.architectures = None
    lm.save_pretrained(d)
    write_hf_extras(d)
    assert {p.name for p in d.glob("*.py")} == {"configuration_spikelm.py", "modeling_spikelm.py"}
    assert "AutoModelForSequenceClassification" not in json.loads((d / "config.json").read_text())["auto_map"]
