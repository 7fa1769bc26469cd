"""SpikeGPT .pth -> spikelm: logits of the upstream model (fixtures/spikegpt-tiny, see its PROVENANCE.md)
reproduced in parallel, recurrent and reloaded form; bad input refused with nothing written."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import spikelm  # noqa: F401 (registers the spikelm auto classes)
from spikelm.convert.mapping import ConversionError
from spikelm.convert.spikegpt import REPORT_NAME, convert_spikegpt

FIXTURE = Path(__file__).parent / "fixtures" / "spikegpt-tiny"
TOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    from safetensors.torch import load_file

    ids = torch.tensor(json.loads((FIXTURE / "ids.json").read_text()))
    return ids, load_file(FIXTURE / "logits.safetensors")["logits"], json.loads((FIXTURE / "spike_rates.json").read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sg") / "spikegpt-tiny"
    report = convert_spikegpt(FIXTURE / "model.pth", out, context_length=32, tokenizer=FIXTURE / "tokenizer.json")
    return out, report


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _recurrent(model, ids):
    state, outs = None, []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            o = model(ids[:, t:t + 1], past_key_values=state, use_cache=True)
            state, outs = o.past_key_values, outs + [o.logits]
    return torch.cat(outs, 1), state


def test_report_and_files(converted):
    out, report = converted
    assert json.loads((out / REPORT_NAME).read_text()) == report
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    sd = torch.load(FIXTURE / "model.pth", map_location="cpu", weights_only=True)
    assert set(report["tensors"]) == set(sd)
    assert report["tensors"]["emb.weight"]["to"] == ["model.embeddings.weight"]
    assert report["tensors"]["blocks.0.att.time_mix_k"]["to"] == ["model.blocks.0.att.time_mix_k"]
    assert "src/model.py" in report["semantics"] and "model_run.py" in report["semantics"]
    cfg = report["config"]
    assert (cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"],
            cfg["max_position_embeddings"]) == (64, 32, 2, 128, 32)
    assert report["tokenizer"]["vocab"] == 64


def test_parallel_matches_upstream(converted, reference):
    ids, ref, rates = reference
    model = _load(converted[0])
    with torch.no_grad():
        logits = model(ids).logits
    assert (logits - ref).abs().max().item() < TOL
    got = model.model.spike_rates()
    for i in range(2):
        assert got[f"layers.{i}.att"] == pytest.approx(rates[f"blocks.{i}.lif1"], abs=1e-5)
        assert got[f"layers.{i}.ffn"] == pytest.approx(rates[f"blocks.{i}.lif2"], abs=1e-5)


def test_recurrent_matches_upstream(converted, reference):
    ids, ref, _ = reference
    logits, state = _recurrent(_load(converted[0]), ids)
    assert state.seen_tokens == ids.shape[1]
    assert (logits - ref).abs().max().item() < TOL


def test_save_pretrained_roundtrip(converted, reference, tmp_path):
    from transformers import AutoTokenizer

    ids, ref, _ = reference
    _load(converted[0]).save_pretrained(tmp_path / "again")
    with torch.no_grad():
        logits = _load(tmp_path / "again")(ids).logits
    assert (logits - ref).abs().max().item() < TOL
    tok = AutoTokenizer.from_pretrained(converted[0])
    assert len(tok) == 64 and tok.eos_token == "<|endoftext|>"


def test_folder_source_and_options(tmp_path, reference):
    ids, ref, _ = reference
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "rwkv-7.pth").write_bytes((FIXTURE / "model.pth").read_bytes())
    (src / "tokenizer.json").write_bytes((FIXTURE / "tokenizer.json").read_bytes())
    report = convert_spikegpt(src, tmp_path / "ann", context_length=32, spiking="off", spike_embedding=False)
    assert report["tokenizer"]["vocab"] == 64  # the folder's own tokenizer.json
    model = _load(tmp_path / "ann")
    assert model.config.neuron == "none" and not model.config.spike_embedding
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max().item() > 0.1  # a different model: no LIF, real embedding
    assert not any(k.endswith((".att", ".ffn")) for k in model.model.spike_rates())


# --- bad input: a clear error, nothing written --------------------------------------------------------------

def _assert_refused(tmp_path, out, exc, match, **kw):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(exc, match=match):
        convert_spikegpt(kw.pop("src"), out, context_length=32, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary folder left


def test_not_a_spikegpt_state_dict(tmp_path):
    torch.save({"model.layers.0.weight": torch.zeros(2, 2)}, tmp_path / "x.pth")
    _assert_refused(tmp_path, tmp_path / "out", ConversionError, "not a SpikeGPT state dict", src=tmp_path / "x.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    _assert_refused(tmp_path, tmp_path / "out", ConversionError, "does not hold a state dict",
                    src=tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("hello")
    _assert_refused(tmp_path, tmp_path / "out", ConversionError, "not a readable PyTorch checkpoint",
                    src=tmp_path / "text.pth")


def test_folder_with_two_checkpoints(tmp_path):
    src = tmp_path / "two"
    src.mkdir()
    for n in ("a.pth", "b.pth"):
        (src / n).write_bytes((FIXTURE / "model.pth").read_bytes())
    _assert_refused(tmp_path, tmp_path / "out", ConversionError, "exactly one", src=src)


@pytest.mark.parametrize("extra", ["head_q.weight", "copy_mask", "blocks.0.ffnPre.key.weight", "pos_emb_x",
                                   "blocks.1.ln0.weight"])
def test_unknown_key(tmp_path, extra):
    sd = torch.load(FIXTURE / "model.pth", map_location="cpu", weights_only=True)
    sd[extra] = torch.zeros(3)
    torch.save(sd, tmp_path / "x.pth")
    _assert_refused(tmp_path, tmp_path / "out", ConversionError, f"no home.*{extra}", src=tmp_path / "x.pth")


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_is_not_weights_only(tmp_path):
    marker = tmp_path.parent / f"{tmp_path.name}-pwned"
    torch.save({"emb.weight": torch.zeros(4, 2), "x": _Evil(str(marker))}, tmp_path / "evil.pth")
    _assert_refused(tmp_path, tmp_path / "out", ConversionError, "not a weights-only checkpoint",
                    src=tmp_path / "evil.pth")
    assert not marker.exists()


def test_tokenizer_bigger_than_embedding(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"t{i}": i for i in range(100)}, unk_token="t0")).save(str(tmp_path / "big.json"))
    _assert_refused(tmp_path, tmp_path / "out", ConversionError, "100 tokens.*only 64 rows",
                    src=FIXTURE / "model.pth", tokenizer=tmp_path / "big.json")


def test_existing_out_dir(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    _assert_refused(tmp_path, tmp_path / "out", FileExistsError, "already exists", src=FIXTURE / "model.pth")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_bad_context_length_and_spiking(tmp_path):
    _assert_refused(tmp_path, tmp_path / "out", ConversionError, "unknown spiking", src=FIXTURE / "model.pth",
                    spiking="ste")
    with pytest.raises(ConversionError, match="context_length"):
        convert_spikegpt(FIXTURE / "model.pth", tmp_path / "out", context_length=0)
    assert not (tmp_path / "out").exists()
