"""SpikingBrain-7B (``gla_swa``) conversion, checked against logits made with SpikingBrain's own code
(``fixtures/spikingbrain-tiny``, see its PROVENANCE.md: 4 layers GLA/SWA/GLA/SWA, 4 heads / 2 KV heads,
window 8 < L = 20)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import spikelm  # noqa: F401 (registers the Auto classes)
from spikelm.convert import ConversionError
from spikelm.convert.spikingbrain import convert_spikingbrain, repeat_gate_rows

FIXTURE = Path(__file__).parent / "fixtures" / "spikingbrain-tiny"
TOL = 1e-4


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _reference() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(json.loads((FIXTURE / "ids.json").read_text()))
    return ids, load_file(FIXTURE / "logits.safetensors")["logits"]


def _recurrent_logits(model, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """Logits of ``ids`` fed ``chunk`` tokens at a time with the returned cache (as tests/models/test_modes.py)."""
    state, outs = None, []
    for s in range(0, ids.shape[1], chunk):
        o = model(ids[:, s:s + chunk], past_key_values=state, use_cache=True)
        state, outs = o.past_key_values, outs + [o.logits]
    return torch.cat(outs, 1)


@pytest.fixture(scope="module")
def converted_off(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sb") / "off"
    return out, convert_spikingbrain(FIXTURE, out, spiking="off")


def test_ann_conversion_matches_their_logits_parallel_recurrent_and_reloaded(converted_off, tmp_path):
    out, report = converted_off
    ids, want = _reference()
    model = _load(out)
    assert type(model).__name__ == "SpikeLMForCausalLM"
    cfg = model.config
    assert cfg.mixer_types == ["gla", "swa", "gla", "swa"] and cfg.adaptive_spike_mode == "off"
    assert cfg.sliding_window == 9 and report["source_window"] == 8 and report["window"] == 9 and report["exact"]
    assert cfg.gla_num_key_value_heads == 2 and cfg.num_key_value_heads == 2 and cfg.attention_bias
    assert cfg.rope_theta == 10000.0 and cfg.layer_norm_eps == 1e-6
    with torch.no_grad():
        got = model(ids).logits
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert (got - want).abs().max().item() < TOL                          # (a) one parallel forward
        for chunk in (1, 3):                                                  # (b) recurrent decoding
            assert (_recurrent_logits(model, ids, chunk) - want).abs().max().item() < TOL
    model.save_pretrained(tmp_path / "resaved")
    with torch.no_grad():
        assert (_load(tmp_path / "resaved")(ids).logits - want).abs().max().item() < TOL  # (c) after a reload


def test_report_lists_every_source_tensor_and_copies_it_exactly(converted_off):
    out, report = converted_off
    state = _load(out).state_dict()
    with safe_open(FIXTURE / "model.safetensors", framework="pt") as f:
        names = set(f.keys())
        assert set(report["tensors"]) == names
        for name in names:
            (dest,) = report["tensors"][name]["to"]
            src = f.get_tensor(name)
            if ".gk_proj.1." in name:  # the per-KV-head gate, repeated for the 2 query heads of each group
                src = src.reshape(2, 8, *src.shape[1:]).repeat_interleave(2, 0).reshape(32, *src.shape[1:])
            assert torch.equal(state[dest], src), (name, dest)
    assert (out / "conversion_report.json").is_file() and (out / "tokenizer.json").is_file()


def test_the_window_is_source_plus_one(tmp_path):
    """flash_attn's window_size=(8, 0) shows 9 keys: spikelm's window 8 differs from the first position past it."""
    convert_spikingbrain(FIXTURE, tmp_path / "w8", spiking="off", config_overrides={"sliding_window": 8})
    ids, want = _reference()
    with torch.no_grad():
        diff = (_load(tmp_path / "w8")(ids).logits - want).abs()
    assert diff[:, :8].max() < TOL and diff[:, 8:].max() > 1e-3


def test_repeat_gate_rows_follows_repeat_kv():
    t = torch.arange(2 * 3 * 5).reshape(6, 5)           # 2 KV heads x head_dim 3, rank 5
    r = repeat_gate_rows(t, heads=4, kv_heads=2)
    assert r.shape == (12, 5) and torch.equal(r[:6], torch.cat([t[:3], t[:3]])) and torch.equal(r[6:9], t[3:])
    assert torch.equal(repeat_gate_rows(torch.arange(6), 4, 2), torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]))


@pytest.mark.parametrize("key,value", [("use_short_conv", True), ("feature_map", "elu"), ("use_output_gate", True),
                                       ("attn_mode", "parallel"), ("hidden_act", "gelu")])
def test_configs_the_layout_cannot_express_fail_and_write_nothing(key, value, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ConversionError, match=key):
        convert_spikingbrain(src, tmp_path / "out", spiking="off")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_unknown_tensor_fails_and_write_nothing(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    tensors = load_file(src / "model.safetensors")
    save_file({**tensors, "model.layers.0.attn.q_conv1d.weight": torch.zeros(32, 1, 4)}, src / "model.safetensors")
    with pytest.raises(ConversionError, match="q_conv1d"):
        convert_spikingbrain(src, tmp_path / "out", spiking="off")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_existing_out_dir_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_spikingbrain(FIXTURE, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_not_a_spikingbrain_config(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ConversionError, match="gla_swa"):
        convert_spikingbrain(src, tmp_path / "out")


def test_default_spiking_conversion_loads_and_generates(tmp_path):
    from transformers import AutoTokenizer

    report = convert_spikingbrain(FIXTURE, tmp_path / "ste")
    assert report["spiking"] == "ste" and not report["exact"]
    model = _load(tmp_path / "ste")
    assert model.config.adaptive_spike_mode == "ste" and model.config.neuron == "none"
    tok = AutoTokenizer.from_pretrained(tmp_path / "ste")
    assert len(tok) == 64
    ids, want = _reference()
    with torch.no_grad():
        logits = model(ids).logits
        gen = model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False)
    assert torch.isfinite(logits).all() and (logits - want).abs().max() > TOL  # the neurons change the output
    assert gen.shape == (1, 11) and torch.equal(gen[:, :5], ids[:1, :5])
    rates = model.model.spike_rates()
    assert any(k.endswith("att.in.sparsity") for k in rates)


def test_sharded_tied_source_equals_the_untied_one_file_source(tmp_path):
    """Several shards (with an index) and tie_word_embeddings (no lm_head) convert to the same model
    as one file whose lm_head is a copy of the embedding."""
    from safetensors.torch import save_file

    tensors = load_file(FIXTURE / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embeddings.weight"].clone()
    untied, tied = tmp_path / "untied", tmp_path / "tied"
    shutil.copytree(FIXTURE, untied)
    save_file(tensors, untied / "model.safetensors")
    shutil.copytree(FIXTURE, tied)
    (tied / "model.safetensors").unlink()
    cfg = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    names = sorted(k for k in tensors if k != "lm_head.weight")
    shards = {f"model-0000{i + 1}-of-00002.safetensors": names[i::2] for i in range(2)}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tied / file)
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tied / "model.safetensors.index.json").write_text(json.dumps(index))
    report = convert_spikingbrain(tied, tmp_path / "out-tied", spiking="off")
    convert_spikingbrain(untied, tmp_path / "out-untied", spiking="off")
    assert report["tensors"]["model.embeddings.weight"]["to"] == ["model.embeddings.weight", "head.weight"]
    assert len(report["output_files"]) == 2 and (tmp_path / "out-tied" / "model.safetensors.index.json").is_file()
    a, b = _load(tmp_path / "out-tied"), _load(tmp_path / "out-untied")
    assert a.config.tie_word_embeddings and a.head.weight.data_ptr() == a.model.embeddings.weight.data_ptr()
    ids, _ = _reference()
    with torch.no_grad():
        assert (a(ids).logits - b(ids).logits).abs().max().item() < 1e-6
