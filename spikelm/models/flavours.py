"""Named model flavours: the architecture sizes recipes refer to by name.

Three families share one model class (``SpikeLMConfig.mixer_types`` picks each layer's mixer):

* SpikeGPT (Zhu et al. 2023): RWKV-4 time-mix + channel-mix, LIF after each sub-block;
* Spikformer-style (Zhou et al. 2023): causal spiking self-attention (``ssa``) and
  Spikformer's spiking MLP, LIF neurons everywhere;
* SpikingBrain-style hybrids (Pan et al. 2025, SpikingBrain-7B): gated linear attention and
  sliding-window attention interleaved (SWA on odd layers), SwiGLU MLP, RMSNorm, adaptive
  spiking on every projection input, no LIF.
"""
from __future__ import annotations

from .configuration_spikelm import SpikeLMConfig


def _hybrid(layers: int, **kw) -> dict:
    """A SpikingBrain-style hybrid: ``gla`` on even layers, ``swa`` on odd ones."""
    return dict(num_hidden_layers=layers, mixer_types=["gla", "swa"] * (layers // 2) + ["gla"] * (layers % 2),
                mlp_types="swiglu", neuron="none", norm_type="rmsnorm", adaptive_spike_mode="ste", **kw)


def _hybrid_moe(layers: int, dense: tuple[int, ...], **kw) -> dict:
    """A SpikingBrain-76B-style hybrid-linear MoE: :func:`_hybrid` with ``moe`` MLPs except on the
    ``dense`` layers (SpikingBrain-76B keeps 7 of its 28 layers dense, the first ones among them)."""
    out = _hybrid(layers, **kw)
    out["mlp_types"] = ["swiglu" if i in dense else "moe" for i in range(layers)]
    return out


def _spikformer(layers: int, **kw) -> dict:
    return dict(num_hidden_layers=layers, mixer_types="ssa", mlp_types="spiking_mlp", **kw)


FLAVOURS: dict[str, dict] = {
    # tiny, for tests
    "debug": dict(hidden_size=32, num_hidden_layers=2, max_position_embeddings=64),
    # the CPU default: trains on tiny Shakespeare on 2 cores in minutes
    "shakespeare": dict(hidden_size=256, num_hidden_layers=4, max_position_embeddings=128),
    # SpikeGPT paper sizes (Zhu et al. 2023, Table 1)
    "spikegpt-45m": dict(hidden_size=512, num_hidden_layers=12, max_position_embeddings=1024),
    "spikegpt-216m": dict(hidden_size=768, num_hidden_layers=18, max_position_embeddings=1024),
    # Spikformer-style causal spiking self-attention LM
    "spikformer-debug": _spikformer(2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                    max_position_embeddings=64),
    "spikformer-shakespeare": _spikformer(4, hidden_size=256, num_attention_heads=4, max_position_embeddings=128),
    # SpikingBrain-style hybrids (GLA + SWA, SwiGLU, adaptive spiking on projection inputs)
    "hybrid-debug": _hybrid(2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                            sliding_window=16, max_position_embeddings=64),
    "hybrid-shakespeare": _hybrid(4, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=704, sliding_window=64, max_position_embeddings=128),
    # SpikingBrain-76B-style MoE hybrids (report §2.2: 1 shared + top-1 of 16 routed experts, the
    # first layers dense); here top-1 of 8 routed + 1 shared expert, each half the dense width,
    # so a token's active MLP width equals hybrid-shakespeare's (704)
    "moe-debug": _hybrid_moe(2, (0,), hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=64, sliding_window=16, max_position_embeddings=64, num_experts=4,
                             num_experts_per_tok=1, num_shared_experts=1, moe_intermediate_size=32),
    "moe-shakespeare": _hybrid_moe(4, (0,), hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=704, sliding_window=64, max_position_embeddings=128,
                                   num_experts=8, num_experts_per_tok=1, num_shared_experts=1,
                                   moe_intermediate_size=352),
    # ~1.07B parameters with a 50k vocabulary: 18 layers, D=2048, 16 heads of 128 (SWA: 4 KV
    # heads, window 2048), SwiGLU 5632, Qwen2-style q/k/v biases
    "hybrid-1b": _hybrid(18, hidden_size=2048, num_attention_heads=16, num_key_value_heads=4, intermediate_size=5632,
                         sliding_window=2048, attention_bias=True, rope_theta=500000.0, max_position_embeddings=4096),
    # hybrid-1b with Mixtral-style MoE MLPs (8 experts of the dense width, top-2) on all but the
    # first two layers: what `spikelm convert --moe-experts 8 --moe-top-k 2` makes of hybrid-1b
    "hybrid-moe-8x1b": _hybrid_moe(18, (0, 1), hidden_size=2048, num_attention_heads=16, num_key_value_heads=4,
                                   intermediate_size=5632, sliding_window=2048, attention_bias=True,
                                   rope_theta=500000.0, max_position_embeddings=4096, num_experts=8,
                                   num_experts_per_tok=2),
}


def flavour_config(name: str, **overrides) -> SpikeLMConfig:
    """``SpikeLMConfig`` of a named flavour, with keyword overrides (e.g. ``vocab_size``).

    An override ``context_length`` (the former name of ``max_position_embeddings``) replaces the
    flavour's ``max_position_embeddings``.

    Raises:
        ValueError: unknown flavour name (the message lists the known ones), or an invalid
            override (from ``SpikeLMConfig``).
    """
    if name not in FLAVOURS:
        raise ValueError(f"unknown model flavour {name!r}; known flavours: {', '.join(FLAVOURS)}")
    if "context_length" in overrides and "max_position_embeddings" not in overrides:
        overrides["max_position_embeddings"] = overrides.pop("context_length")
    return SpikeLMConfig(**{**FLAVOURS[name], **overrides})
