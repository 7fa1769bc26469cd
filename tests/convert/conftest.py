"""Tiny random Llama-family checkpoints (built with transformers, saved in several shards) and a
tiny byte-level BPE tokenizer, shared by the conversion tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

VOCAB = 320          # model embedding rows; the tokenizer has fewer tokens (as Qwen's padded vocabularies)
TOKENIZER_VOCAB = 300
TEXT = ["the quick brown fox jumps over the lazy dog. " * 4, "spiking neurons fire when the membrane crosses "
        "threshold; " * 3, "to be or not to be, that is the question. " * 4]


def hf_config(kind: str, **kw):
    """A tiny transformers config of ``kind``: hidden 64, 4 heads of 16 (2 KV heads), 3 layers."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    base = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
            "bos_token_id": None, "eos_token_id": 0, "pad_token_id": 0}
    if kind == "llama":
        return LlamaConfig(**{**base, "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}, **kw})
    if kind == "llama-bias":  # Llama with attention/MLP biases, llama3 RoPE scaling, tied embeddings
        rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        return LlamaConfig(**{**base, "attention_bias": True, "mlp_bias": True, "rope_parameters": rope,
                              "tie_word_embeddings": True, **kw})
    if kind == "qwen2":
        return Qwen2Config(**{**base, "tie_word_embeddings": True, **kw})
    if kind == "qwen3":  # head_dim 24 != hidden / heads
        return Qwen3Config(**{**base, "head_dim": 24, **kw})
    if kind == "mistral":
        return MistralConfig(**{**base, "sliding_window": 8, **kw})
    raise ValueError(kind)


def randomize(model) -> None:
    """Random norms and biases too (transformers inits them to 1 / 0), so every tensor matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.copy_(p + 0.2 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from spikelm.data import train_bpe_tokenizer_from_iterator

    tok = train_bpe_tokenizer_from_iterator(TEXT, vocab_size=TOKENIZER_VOCAB, model_max_length=64)
    d = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(d)
    return d


def save_hf(kind: str, root: Path, tokenizer_dir: Path, **kw) -> tuple[Path, torch.nn.Module]:
    """Build, randomise and save a tiny ``kind`` model in several safetensors shards, with the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed({"llama": 1, "llama-bias": 2, "qwen2": 3, "qwen3": 4, "mistral": 5}[kind])
    model = AutoModelForCausalLM.from_config(hf_config(kind, **kw)).eval()
    randomize(model)
    d = root / kind
    model.save_pretrained(d, max_shard_size="60KB")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(d)
    return d, model


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory, tokenizer_dir) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("hf")
    return {k: save_hf(k, root, tokenizer_dir) for k in ("llama", "llama-bias", "qwen2", "qwen3", "mistral")}
