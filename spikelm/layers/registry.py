"""The registry of layer kinds: the one place that names each token mixer and MLP.

``SpikeLMConfig.mixer_types`` / ``mlp_types`` hold these names; the accepted values of the
config (``MIXER_TYPES``, ``MLP_TYPES``), the block's builders, the FLOPs counter and the
converter are all derived from the two tables below. Each value is a
:class:`~spikelm.layers.base.SpikeLMLayer` subclass, which carries everything else about the
kind: ``from_config(config, layer_id)``, its ``State`` NamedTuple, its ``spike_sites``,
``flops_per_token(config, context)`` and ``check_config(config)``.

Adding a token mixer: write the class (see docs/architecture.md, "Adding a mixer") and add one
line to :data:`MIXERS`; the config accepts the new name, ``build_mixer`` builds it, the
FLOPs counter counts it and the generation cache stores its state.
"""
from __future__ import annotations

from .base import SpikeLMLayer
from .channel_mix import RWKV4ChannelMix
from .gla import SpikingGLA
from .mlp import SpikingMLP, SwiGLU
from .moe import SpikingMoE
from .ssa import SpikeDrivenSelfAttention, SpikingSelfAttention
from .swa import SlidingWindowAttention
from .time_mix import RWKV4TimeMix

MIXERS: dict[str, type[SpikeLMLayer]] = {
    "rwkv4": RWKV4TimeMix,                 # SpikeGPT's RWKV-4 time-mix (Zhu et al. 2023)
    "ssa": SpikingSelfAttention,           # Spikformer's spiking self-attention, causal (Zhou et al. 2023)
    "sdsa": SpikeDrivenSelfAttention,      # Spike-driven Transformer's SDSA, causal (Yao et al. 2023)
    "gla": SpikingGLA,                     # SpikingBrain's gated linear attention (Pan et al. 2025)
    "swa": SlidingWindowAttention,         # SpikingBrain's sliding-window softmax attention
}
"""Token-mixer kind -> class (insertion order = the order error messages list them in)."""

MLPS: dict[str, type[SpikeLMLayer]] = {
    "channel_mix": RWKV4ChannelMix,        # SpikeGPT's RWKV-4 channel-mix
    "swiglu": SwiGLU,                      # SwiGLU (Shazeer 2020), SpikingBrain / Llama
    "spiking_mlp": SpikingMLP,             # Spikformer's MLP
    "moe": SpikingMoE,                     # routed + shared SwiGLU experts, SpikingBrain-76B style
}
"""MLP (channel-mixer) kind -> class."""


def mixer_class(kind: str) -> type[SpikeLMLayer]:
    """The class of token-mixer ``kind``. Raises ValueError for an unknown kind (listing the accepted ones)."""
    if kind not in MIXERS:
        raise ValueError(f"unknown mixer type {kind!r}; accepted: {', '.join(MIXERS)}")
    return MIXERS[kind]


def mlp_class(kind: str) -> type[SpikeLMLayer]:
    """The class of MLP ``kind``. Raises ValueError for an unknown kind (listing the accepted ones)."""
    if kind not in MLPS:
        raise ValueError(f"unknown mlp type {kind!r}; accepted: {', '.join(MLPS)}")
    return MLPS[kind]


def kind_of(cls: type) -> str:
    """The registered name of a mixer or MLP class (``kind_of(SpikingGLA) == "gla"``).

    Raises ValueError for a class in neither table."""
    for table in (MIXERS, MLPS):
        for kind, c in table.items():
            if c is cls:
                return kind
    raise ValueError(f"{cls.__name__} is not a registered mixer or MLP")
