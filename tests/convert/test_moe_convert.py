"""spikelm convert for mixture-of-experts: tiny random Mixtral / Qwen2-MoE checkpoints converted
exactly (both key styles: per-expert as save_pretrained writes, fused 3D as the modules hold),
and upcycling of dense SwiGLU MLPs (Llama, converted spikelm) into ``moe`` layers that start with
the dense model's logits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import spikelm  # noqa: F401 (registers the Auto classes)
from spikelm.cli import main
from spikelm.convert import convert_any, convert_checkpoint

from .conftest import TOKENIZER_VOCAB, VOCAB, randomize, save_hf

FIX = Path(__file__).parent / "fixtures"
BASE = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "bos_token_id": None,
        "eos_token_id": 0, "pad_token_id": 0}


def moe_config(kind: str):
    """Mixtral: 4 experts of 48, top-2, window 8. Qwen2-MoE: 4 experts of 32, top-2, one gated
    shared expert of 48, norm_topk_prob False, layer 1 dense (96), tied embeddings."""
    from transformers import MixtralConfig, Qwen2MoeConfig

    if kind == "mixtral":
        return MixtralConfig(**BASE, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
                             sliding_window=8, router_aux_loss_coef=0.02)
    return Qwen2MoeConfig(**BASE, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                          num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, mlp_only_layers=[1],
                          tie_word_embeddings=True, router_aux_loss_coef=0.003)


def build_moe(kind: str, root: Path, tokenizer_dir: Path, fused: bool = False) -> tuple[Path, torch.nn.Module]:
    """A random fp32 ``kind`` model saved with the tokenizer: ``save_pretrained`` in shards
    (per-expert keys), or with ``fused`` its own state dict in one file (3D expert tensors)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed({"mixtral": 11, "qwen2_moe": 12}[kind])
    model = AutoModelForCausalLM.from_config(moe_config(kind)).eval()
    randomize(model)
    with torch.no_grad():  # sharp, token-dependent routing and experts that matter
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.mul_(50.0)
            elif ".mlp." in name:
                p.mul_(10.0)
    d = root / f"{kind}{'-fused' if fused else ''}"
    if fused:
        d.mkdir()
        model.config.save_pretrained(d)
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    else:
        model.save_pretrained(d, max_shard_size="60KB")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(d)
    return d, model


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("moe")
    return {k: build_moe(k, root, tokenizer_dir) for k in ("mixtral", "qwen2_moe")}


@pytest.fixture(scope="module")
def dense_models(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("dense")
    return {k: save_hf(k, root, tokenizer_dir) for k in ("llama", "llama-bias")}


def _load(out: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, TOKENIZER_VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))  # > Mixtral's window


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_moe_source_converts_exactly(kind, moe_models, tmp_path):
    src, ann = moe_models[kind]
    out = tmp_path / "out"
    report = convert_checkpoint(src, out, layout="softmax", spiking="off")
    assert report["exact"] and report["moe"] == {"upcycled": False}
    want = ["moe", "swiglu", "moe"] if kind == "qwen2_moe" else ["moe"] * 3
    assert report["mlp_types"] == want
    model = _load(out)
    cfg = model.config
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_capacity_factor) == (4, 2, 0.0)
    if kind == "qwen2_moe":
        assert (cfg.num_shared_experts, cfg.shared_expert_gate, cfg.norm_topk_prob) == (1, True, False)
        assert (cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size, cfg.intermediate_size) == (32, 48, 96)
        assert cfg.router_aux_loss_coef == 0.003 and cfg.attention_bias and cfg.tie_word_embeddings
    else:
        assert (cfg.num_shared_experts, cfg.norm_topk_prob, cfg.sliding_window) == (0, True, 8)
        assert cfg.router_aux_loss_coef == 0.02
    got, ref = _logits(model, IDS), _logits(ann, IDS)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max().item() < 1e-5
    stats = model.model.moe_stat_tensors()
    assert (stats["layers.0.expert_load"] > 0).sum() >= 2  # the routing is not degenerate
    # every source tensor is accounted for; nothing new
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(report["tensors"]) == set(index) and not report["new_tensors"]
    # generation matches the source's (greedy, a few tokens)
    prompt = IDS[:1, :6]
    with torch.no_grad():
        mine = model.generate(prompt, max_new_tokens=5, do_sample=False)
        theirs = ann.generate(prompt, max_new_tokens=5, do_sample=False)
    assert mine.shape[1] > 6 and torch.equal(mine, theirs)


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_fused_expert_tensors_convert_exactly(kind, tokenizer_dir, tmp_path):
    """Checkpoints holding the 3D ``experts.gate_up_proj`` / ``experts.down_proj`` (gate rows first)."""
    src, ann = build_moe(kind, tmp_path, tokenizer_dir, fused=True)
    report = convert_checkpoint(src, tmp_path / "out", layout="softmax", spiking="off")
    assert report["tensors"]["model.layers.0.mlp.experts.gate_up_proj"]["to"][:2] == [
        "model.blocks.0.ffn.experts.0.gate_proj.weight", "model.blocks.0.ffn.experts.0.up_proj.weight"]
    model = _load(tmp_path / "out")
    inter = model.config.moe_intermediate_size
    fused = ann.model.layers[0].mlp.experts.gate_up_proj
    assert torch.equal(model.model.blocks[0].ffn.experts[3].up_proj.weight, fused[3, inter:])
    assert (_logits(model, IDS) - _logits(ann, IDS)).abs().max().item() < 1e-5


@pytest.mark.parametrize("shared", [0, 1])
def test_upcycled_llama_starts_with_the_dense_logits(shared, dense_models, tmp_path, capsys):
    kind = "llama" if shared == 0 else "llama-bias"  # llama-bias: MLP biases (scaled too), tied embeddings
    src, ann = dense_models[kind]
    out = tmp_path / "out"
    argv = ["convert", str(src), str(out), "--layout", "softmax", "--spiking", "off", "--moe-experts", "4",
            "--moe-top-k", "2", "--moe-shared", str(shared)]
    assert main(argv) == 0
    assert "upcycled swiglu MLPs into moe: 4 experts (top-2)" in capsys.readouterr().out
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["moe"]["upcycled"] and report["moe"]["down_proj_scale"] == 1 / (1 + shared)
    assert set(report["new_tensors"]) == {f"model.blocks.{i}.ffn.router.weight" for i in range(3)}
    model = _load(out)
    cfg = model.config
    assert cfg.mlp_types == ["moe"] * 3 and cfg.norm_topk_prob and cfg.num_shared_experts == shared
    ffn = model.model.blocks[1].ffn
    assert ffn.router.weight.std().item() == pytest.approx(cfg.initializer_range, rel=0.2)
    dense = ann.model.layers[1].mlp
    assert torch.equal(ffn.experts[2].gate_proj.weight, dense.gate_proj.weight)
    assert torch.allclose(ffn.experts[0].down_proj.weight, dense.down_proj.weight / (1 + shared))
    assert (_logits(model, IDS) - _logits(ann, IDS)).abs().max().item() < 1e-5
    # deterministic: the same seed gives the same routers
    again = tmp_path / "again"
    assert main([*argv[:2], str(again), *argv[3:]]) == 0
    assert torch.equal(_load(again).model.blocks[1].ffn.router.weight, ffn.router.weight)


@pytest.mark.parametrize("shared", [0, 1])
def test_upcycled_spikelm_dir_starts_with_its_logits(shared, dense_models, tmp_path):
    """A converted spikelm checkpoint (hybrid GLA/SWA, adaptive spiking on) upcycled: same logits."""
    src, _ = dense_models["llama-bias"]
    dense_dir = tmp_path / "dense"
    convert_checkpoint(src, dense_dir, layout="hybrid", spiking="ste")
    out = tmp_path / "moe"
    report = convert_any(dense_dir, out, moe_experts=3, moe_top_k=2, moe_shared=shared, seed=5)
    assert report["source_kind"] == "spikelm" and report["mlp_types"] == ["moe"] * 3
    assert report["new_tensors"] and all(e["to"] or "tie" in e["note"] for e in report["tensors"].values())
    dense, model = _load(dense_dir), _load(out)
    assert model.config.adaptive_spike_mode == "ste" and model.config.mixer_types == ["gla", "swa", "gla"]
    assert (_logits(model, IDS) - _logits(dense, IDS)).abs().max().item() < 1e-5
    assert any(k.endswith("ffn.in.sparsity") for k in model.model.spike_rates())  # the experts spike
    assert (out / "tokenizer.json").is_file()
    with torch.no_grad():
        gen = model.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > 5


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def spikegpt_dir(tmp_path_factory):
    """The SpikeGPT fixture converted: a spikelm checkpoint whose MLPs are channel-mix."""
    out = tmp_path_factory.mktemp("spikegpt") / "converted"
    assert main(["convert", str(FIX / "spikegpt-tiny" / "model.pth"), str(out), "--context-length", "32",
                 "--tokenizer", str(FIX / "spikegpt-tiny" / "tokenizer.json")]) == 0
    return out


@pytest.fixture(scope="module")
def upcycled_dir(tmp_path_factory, dense_models):
    out = tmp_path_factory.mktemp("upcycled") / "moe"
    convert_checkpoint(dense_models["llama"][0], out, layout="softmax", spiking="off", moe_experts=2, moe_top_k=1)
    return out


@pytest.mark.parametrize("source, args, message", [
    ("llama", ["--moe-experts", "2", "--moe-top-k", "3"], "--moe-top-k must be between 1 and --moe-experts (2), got 3"),
    ("llama", ["--moe-experts", "0", "--moe-top-k", "1"], "--moe-experts must be >= 1"),
    ("llama", ["--moe-experts", "4", "--moe-top-k", "2", "--moe-shared", "-1"], "--moe-shared must be >= 0"),
    ("llama", ["--moe-top-k", "2"], "--moe-top-k need --moe-experts"),
    ("llama", ["--moe-experts", "4"], "--moe-experts needs --moe-top-k"),
    ("mixtral", ["--moe-experts", "4", "--moe-top-k", "2"], "is already a mixture of experts"),
    ("upcycled", ["--moe-experts", "4", "--moe-top-k", "2"], "is already a mixture of experts"),
    ("spikegpt-pth", ["--moe-experts", "4", "--moe-top-k", "2", "--context-length", "32"],
     "is a spikegpt checkpoint (its MLPs are RWKV channel-mix"),
    ("spikegpt-dir", ["--moe-experts", "4", "--moe-top-k", "2"], "has none (mlp_types channel_mix)"),
    ("upcycled", [], "is already a spikelm checkpoint"),
    ("upcycled", ["--moe-experts", "4", "--moe-top-k", "2", "--layout", "linear"], "takes no layout"),
])
def test_bad_moe_input_is_one_line_and_exit_2(source, args, message, request, tmp_path, capsys):
    paths = {"llama": lambda: request.getfixturevalue("dense_models")["llama"][0],
             "mixtral": lambda: request.getfixturevalue("moe_models")["mixtral"][0],
             "upcycled": lambda: request.getfixturevalue("upcycled_dir"),
             "spikegpt-pth": lambda: FIX / "spikegpt-tiny" / "model.pth",
             "spikegpt-dir": lambda: request.getfixturevalue("spikegpt_dir")}
    src = paths[source]()
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.iterdir())
