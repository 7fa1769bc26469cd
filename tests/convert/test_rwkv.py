"""transformers RwkvForCausalLM -> spikelm SpikeGPT block: spiking="off" reproduces transformers' logits
(parallel and recurrent); bad input refused with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import spikelm  # noqa: F401 (registers the spikelm auto classes)
from spikelm.convert.mapping import ConversionError
from spikelm.convert.rwkv import convert_rwkv, is_rwkv_dir, map_rwkv_name

TOKENIZER = Path(__file__).parent / "fixtures" / "spikegpt-tiny" / "tokenizer.json"  # 64 tokens
VOCAB = 64


def _randomize(model) -> None:
    """Every parameter random at a scale where each matters (transformers zero-inits some)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "time_mix" in name:
                p.copy_(torch.rand(p.shape, generator=g))
            elif "time_decay" in name:
                p.copy_(r)
            elif "time_first" in name:
                p.copy_(0.5 * r)
            elif name.endswith("bias"):
                p.copy_(0.2 * r)
            elif p.dim() == 1:  # LayerNorm weights
                p.copy_(1 + 0.2 * r)
            elif "embeddings" in name:
                p.copy_(r)
            else:
                p.copy_(r * 1.5 / p.shape[1] ** 0.5)


def _write_source(path: Path, **kw) -> Path:
    from transformers import PreTrainedTokenizerFast, RwkvConfig, RwkvForCausalLM

    torch.manual_seed(0)
    cfg = RwkvConfig(**{"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 4, "rescale_every": 2,
                        "context_length": 48, "intermediate_size": None, **kw})
    model = RwkvForCausalLM(cfg).float()
    _randomize(model)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _write_source(tmp_path_factory.mktemp("rwkv") / "src")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def hf_logits(source, ids):
    """transformers' logits: eval mode on a fresh load (its rescale_every halving) and train mode (none)."""
    from transformers import RwkvForCausalLM

    out = {}
    for mode in ("eval", "train"):
        model = RwkvForCausalLM.from_pretrained(source)
        model.train(mode == "train")  # RWKV has no dropout: train mode only skips the rescaling
        with torch.no_grad():
            out[mode] = model(ids).logits
    return out


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_off_matches_transformers(source, ids, hf_logits, tmp_path):
    report = convert_rwkv(source, tmp_path / "out", spiking="off")
    assert report["exact"] and report["config"]["neuron"] == "none" and not report["config"]["spike_embedding"]
    assert report["config"]["max_position_embeddings"] == 48 and report["config"]["intermediate_size"] == 128
    assert report["tensors"]["rwkv.blocks.0.pre_ln.weight"]["to"] == ["model.blocks.0.ln0.weight"]
    assert report["tensors"]["rwkv.blocks.3.attention.time_mix_receptance"]["to"] == ["model.blocks.3.att.time_mix_r"]
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    model = _load(tmp_path / "out")
    with torch.no_grad():
        par = model(ids).logits
    state, outs = None, []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            o = model(ids[:, t:t + 1], past_key_values=state, use_cache=True)
            state, outs = o.past_key_values, outs + [o.logits]
    rec = torch.cat(outs, 1)
    assert hf_logits["eval"].std() > 0.5  # non-trivial outputs
    for got in (par, rec):
        assert (got - hf_logits["eval"]).abs().max().item() < 1e-4
        assert (got - hf_logits["train"]).abs().max().item() < 1e-5  # the unrescaled weights, as stored


def test_lif_default(source, ids, hf_logits, tmp_path):
    convert_rwkv(source, tmp_path / "lif")
    model = _load(tmp_path / "lif")
    assert model.config.neuron == "lif" and not model.config.spike_embedding
    with torch.no_grad():
        logits = model(ids).logits
    rates = model.model.spike_rates()
    assert len(rates) == 8 and 0 < sum(rates.values()) / len(rates) < 1
    assert (logits - hf_logits["eval"]).abs().max().item() > 1e-2  # neurons change the function


def test_names():
    assert map_rwkv_name("rwkv.blocks.2.feed_forward.time_mix_key") == "model.blocks.2.ffn.time_mix_k"
    assert map_rwkv_name("rwkv.blocks.1.pre_ln.weight") is None
    assert map_rwkv_name("rwkv.blocks.0.attention.time_decay") == "model.blocks.0.att.time_decay"


def test_attention_hidden_size_mismatch(tmp_path):
    src = _write_source(tmp_path / "src", attention_hidden_size=16)
    assert is_rwkv_dir(src)
    with pytest.raises(ConversionError, match=r"attention_hidden_size \(16\) != hidden_size \(32\)"):
        convert_rwkv(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_not_rwkv_and_existing_out(source, tmp_path):
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not is_rwkv_dir(other)
    with pytest.raises(ConversionError, match="model_type is 'llama'"):
        convert_rwkv(other, tmp_path / "out")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        convert_rwkv(source, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_tied_embeddings(tmp_path, ids):
    """A tied checkpoint has no head.weight in its file; the head is the embedding again."""
    from transformers import RwkvForCausalLM

    src = _write_source(tmp_path / "src", tie_word_embeddings=True)
    report = convert_rwkv(src, tmp_path / "out", spiking="off")
    assert report["tensors"]["rwkv.embeddings.weight"]["to"] == ["model.embeddings.weight", "head.weight"]
    model = _load(tmp_path / "out")
    assert model.config.tie_word_embeddings
    ref = RwkvForCausalLM.from_pretrained(src).train()  # train mode: no rescaling (logits here ~6x larger)
    with torch.no_grad():
        assert (model(ids).logits - ref(ids).logits).abs().max().item() < 1e-4
