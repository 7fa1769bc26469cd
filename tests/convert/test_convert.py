"""spikelm convert: tiny random Llama / Qwen2 / Qwen3 / Mistral checkpoints (several shards),
converted and checked against the transformers models they came from."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

import spikelm  # noqa: F401 (registers the Auto classes)
from spikelm.convert import ConversionError, convert_checkpoint, convert_config
from spikelm.cli.convert import cmd_convert

from .conftest import TOKENIZER_VOCAB, hf_config, save_hf

KINDS = ("llama", "llama-bias", "qwen2", "qwen3", "mistral")


def _index_names(src: Path) -> set[str]:
    return set(json.loads((src / "model.safetensors.index.json").read_text())["weight_map"])


def _load(out: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_softmax_layout_without_spiking_reproduces_the_ann_logits(kind, hf_models, tmp_path):
    src, ann = hf_models[kind]
    assert len(set(json.loads((src / "model.safetensors.index.json").read_text())["weight_map"].values())) > 2
    report = convert_checkpoint(src, tmp_path / "out", layout="softmax", spiking="off")
    assert report["exact"] and report["mixer_types"] == ["swa"] * 3
    model = _load(tmp_path / "out")
    assert type(model).__name__ == "SpikeLMForCausalLM"
    ids = torch.randint(0, TOKENIZER_VOCAB, (2, 40))  # longer than Mistral's window of 8
    with torch.no_grad():
        want, got = ann(ids).logits, model(ids).logits
    assert got.dtype == torch.float32
    assert (got - want).abs().max().item() < 1e-4
    # every source tensor is in the report, and the reused ones are bit-identical
    assert set(report["tensors"]) == _index_names(src)
    state = model.state_dict()
    ann_state = ann.state_dict()
    for name, entry in report["tensors"].items():
        for dest in entry["to"]:
            assert torch.equal(state[dest], ann_state[name]), (name, dest)


def test_the_window_matters_for_mistral(hf_models, tmp_path):
    """A wider window than Mistral's changes the logits (so the exact test above checks the window)."""
    src, ann = hf_models["mistral"]
    report = convert_checkpoint(src, tmp_path / "out", layout="softmax", spiking="off", window=64)
    assert not report["exact"]
    ids = torch.randint(0, TOKENIZER_VOCAB, (1, 40))
    with torch.no_grad():
        diff = (ann(ids).logits - _load(tmp_path / "out")(ids).logits).abs()
    assert diff[:, :8].max() < 1e-4 and diff[:, 8:].max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_full_conversion_loads_and_generates_through_the_pipeline(kind, hf_models, tmp_path):
    from transformers import AutoTokenizer, pipeline

    src, _ = hf_models[kind]
    out = tmp_path / "out"
    report = convert_checkpoint(src, out, layout="hybrid", spiking="ste")
    assert report["mixer_types"] == ["gla", "swa", "gla"] and not report["exact"]
    assert set(report["tensors"]) == _index_names(src)
    # new GLA parameters: gate and head norm of layers 0 and 2, nothing else
    assert set(report["new_tensors"]) == {f"model.blocks.{i}.att.{p}" for i in (0, 2) for p in
                                         ("g_proj.0.weight", "g_proj.1.weight", "g_proj.1.bias", "g_norm.weight")}
    model = _load(out)
    assert model.config.adaptive_spike_mode == "ste" and model.config.mixer_types == ["gla", "swa", "gla"]
    assert model.config.gla_num_key_value_heads == 2
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == TOKENIZER_VOCAB
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    text = gen("the quick brown", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text.startswith("the quick brown") and len(text) > len("the quick brown")
    with torch.no_grad():
        ids = tok("the quick brown fox", return_tensors="pt")["input_ids"]
        model(ids)
    rates = model.model.spike_rates()
    assert any(k.endswith("att.in.sparsity") for k in rates)  # the adaptive neurons ran


def test_expanded_spiking_and_linear_layout(hf_models, tmp_path):
    src, _ = hf_models["llama-bias"]
    report = convert_checkpoint(src, tmp_path / "out", layout="linear", spiking="expanded")
    assert report["mixer_types"] == ["gla"] * 3
    model = _load(tmp_path / "out")
    assert model.config.attention_out_bias and model.config.mlp_bias and model.config.tie_word_embeddings
    assert model.head.weight.data_ptr() == model.model.embeddings.weight.data_ptr()
    with torch.no_grad():
        logits = model(torch.randint(0, TOKENIZER_VOCAB, (1, 12))).logits
    assert torch.isfinite(logits).all()
    entry = report["tensors"]["model.embed_tokens.weight"]
    assert entry["to"] == ["model.embeddings.weight", "head.weight"]


def test_gla_init_gate_memory_and_the_scale_of_v(hf_models, tmp_path):
    src, ann = hf_models["llama"]
    convert_checkpoint(src, tmp_path / "out", layout="hybrid", spiking="off", gla_memory=100.0)
    att = _load(tmp_path / "out").model.blocks[0].att
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        g = torch.nn.functional.logsigmoid(att.g_proj(x)) / att.normalizer
    assert torch.allclose(g.exp(), torch.full_like(g, math.exp(-1 / 100.0)), atol=1e-6)  # input-independent decay
    src_layer = ann.model.layers[0]
    with torch.no_grad():
        v = src_layer.self_attn.v_proj(src_layer.input_layernorm(torch.randn(4096, 64)))
    rms_v = v.pow(2).mean().sqrt().item()
    assert torch.all(att.g_norm.weight == att.g_norm.weight[0])
    assert abs(att.g_norm.weight[0].item() / rms_v - 1) < 0.1  # the weight-only estimate of v's RMS


def test_gla_norm_init_brings_the_output_scale_near_the_softmax_layer(hf_models, tmp_path):
    """Converted layer 0 vs. the source's attention on the same normed input: the v_rms head-norm
    init is much closer in scale (and in output) than RMSNorm's default weight of 1."""
    src, ann = hf_models["llama"]
    sl = ann.model.layers[0]
    h = sl.input_layernorm(torch.randn(2, 48, 64))
    pos = torch.arange(48)[None].expand(2, -1)
    with torch.no_grad():
        ref = sl.self_attn(h, position_embeddings=ann.model.rotary_emb(h, pos), attention_mask=None)[0]
    res = {}
    for norm in ("ones", "v_rms"):
        convert_checkpoint(src, tmp_path / norm, layout="linear", spiking="off", gla_norm_init=norm)
        with torch.no_grad():
            out = _load(tmp_path / norm).model.blocks[0].att(h)[0]
        res[norm] = (float((out - ref).norm() / ref.norm()), float(out.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()))
    assert res["v_rms"][0] < res["ones"][0] / 3
    assert abs(math.log(res["v_rms"][1])) < abs(math.log(res["ones"][1])) / 2


def test_bf16_source_keeps_its_dtype(tokenizer_dir, tmp_path):
    from safetensors import safe_open

    src, ann = save_hf("qwen3", tmp_path, tokenizer_dir)
    ann.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", max_shard_size="60KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, tmp_path / "bf16" / f)
    out = tmp_path / "out"
    report = convert_checkpoint(tmp_path / "bf16", out, layout="hybrid", spiking="ste")
    assert {t["dtype"] for t in report["tensors"].values()} == {"bfloat16"}
    for f in report["output_files"]:
        with safe_open(out / f, framework="pt") as st:
            assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.bfloat16}  # noqa: SIM118
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = _load(out)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, TOKENIZER_VOCAB, (1, 10))).logits.float()).all()


def test_single_file_source(tokenizer_dir, tmp_path):
    """A checkpoint saved as one model.safetensors (no index) converts to one file too."""
    src, ann = save_hf("llama", tmp_path, tokenizer_dir)
    ann.save_pretrained(tmp_path / "one")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, tmp_path / "one" / f)
    report = convert_checkpoint(tmp_path / "one", tmp_path / "out", layout="softmax", spiking="off")
    assert report["output_files"] == ["model.safetensors"]
    assert set(report["tensors"]) == set(ann.state_dict())
    ids = torch.randint(0, TOKENIZER_VOCAB, (1, 20))
    with torch.no_grad():
        assert (ann(ids).logits - _load(tmp_path / "out")(ids).logits).abs().max() < 1e-4


def test_report_file_and_no_partial_output(hf_models, tmp_path):
    src, _ = hf_models["qwen2"]
    out = tmp_path / "out"
    report = convert_checkpoint(src, out, layout="softmax", spiking="off")
    assert json.loads((out / "conversion_report.json").read_text()) == report
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    # tied embeddings: Qwen2 has no lm_head tensor, the report says head.weight is tied
    assert "lm_head.weight" not in report["tensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


# ---------------------------------------------------------------- bad input


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    src = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(src)
    with pytest.raises(ConversionError, match=r"'gpt2'.*llama, qwen2, qwen3, mistral"):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match="supported model_type"):
        convert_config(GPT2Config())


def test_unsupported_rope_type(tokenizer_dir):
    cfg = hf_config("llama", rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0})
    with pytest.raises(ConversionError, match="rope_type 'yarn'.*default, linear, llama3"):
        convert_config(cfg, layout="softmax", spiking="off")


def test_missing_shard_names_tensor_and_file(hf_models, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(hf_models["llama"][0], src)
    weight_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    file = sorted(set(weight_map.values()))[3]
    name = next(k for k, v in weight_map.items() if v == file)
    (src / file).unlink()
    with pytest.raises(FileNotFoundError, match=rf"shard {re.escape(file)} \(holding tensor {re.escape(name)},"):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_names_the_tensor(hf_models, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(hf_models["qwen3"][0], src)
    weight_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.self_attn.k_proj.weight"
    path = src / weight_map[name]
    tensors = load_file(path)
    tensors[name] = tensors[name][:-1]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"shape mismatch for tensor model\.layers\.1\.self_attn\.k_proj\.weight"
                                              r".*\[48, 64\].*\[47, 64\]"):
        convert_checkpoint(src, tmp_path / "out", layout="softmax", spiking="off")
    assert not (tmp_path / "out").exists()


def test_unknown_tensor_is_not_dropped(hf_models, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(hf_models["mistral"][0], src)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    file = min(set(index["weight_map"].values()))
    tensors = load_file(src / file)
    tensors["model.layers.0.self_attn.extra_scale"] = torch.ones(3)
    save_file(tensors, src / file, metadata={"format": "pt"})
    index["weight_map"]["model.layers.0.self_attn.extra_scale"] = file
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="unexpected tensor 'model.layers.0.self_attn.extra_scale'"):
        convert_checkpoint(src, tmp_path / "out")


def test_tokenizer_larger_than_the_embedding(tokenizer_dir, tmp_path):
    src, _ = save_hf("llama", tmp_path, tokenizer_dir, vocab_size=200)
    with pytest.raises(ConversionError, match=r"tokenizer has 300 tokens.*only 200 rows"):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_directory_is_refused(hf_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_checkpoint(hf_models["llama"][0], out)
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_layout(hf_models, tmp_path):
    with pytest.raises(ConversionError, match="unknown layout 'zigzag'; accepted: softmax, hybrid, linear"):
        convert_checkpoint(hf_models["llama"][0], tmp_path / "out", layout="zigzag")
    with pytest.raises(ConversionError, match="3 entries"):
        convert_checkpoint(hf_models["llama"][0], tmp_path / "out", layout="gla,swa")


# ---------------------------------------------------------------- command line


def test_cli_converts_and_reports_errors(hf_models, tmp_path, capsys):
    from spikelm.cli import CLIError

    src = hf_models["qwen2"][0]
    out = tmp_path / "out"
    assert cmd_convert([str(src), str(out), "--layout", "gla,swa,swa", "--spiking", "off"]) == 0
    assert "converted qwen2" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["mixer_types"] == ["gla", "swa", "swa"]
    with pytest.raises(CLIError, match="already exists"):
        cmd_convert([str(src), str(out)])
    with pytest.raises(CLIError, match="no config.json"):
        cmd_convert([str(tmp_path), str(tmp_path / "out2")])
    with pytest.raises(SystemExit):
        cmd_convert([str(src), str(tmp_path / "out3"), "--spiking", "sometimes"])
