"""MLPs (channel mixers) besides RWKV-4's channel-mix: SwiGLU and Spikformer's spiking MLP."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import SpikeLMLayer
from .common import SpikingNorm, fire_tokens, make_neuron, spiking_input


class SwiGLUState(NamedTuple):
    """State of :class:`SwiGLU`: none (the MLP is token-wise); an empty NamedTuple, ``== ()``."""


class SwiGLU(SpikeLMLayer):
    """SwiGLU MLP (Shazeer 2020, "GLU Variants Improve Transformer"; Llama / Qwen2 / SpikingBrain):
    ``W_down s(silu(W_gate s(x)) * W_up s(x))`` with ``s`` the adaptive spiking neuron on the
    projection inputs (SpikingBrain report, Eqs. 19-23; identity when
    ``config.adaptive_spike_mode == "off"``).

    Args: config (``hidden_size`` D, ``intermediate_size`` I, ``mlp_bias`` (biases on the three
    projections, Llama's ``mlp_bias``), ``adaptive_spike_*``); ``intermediate_size``: a width
    other than the config's (the experts of :class:`spikelm.layers.moe.SpikingMoE`).
    ``forward(x [B, L, D], state, mask [B, L] | None) -> (out [B, L, D] in x.dtype, SwiGLUState())``.
    Spike sites: ``"in.sparsity"``, ``"down_in.sparsity"`` (when spiking is on).
    """

    State = SwiGLUState
    spike_sites = ("in.sparsity", "down_in.sparsity")

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        D, inter = config.hidden_size, intermediate_size or config.intermediate_size
        bias = getattr(config, "mlp_bias", False)
        self.in_spike = spiking_input(config)
        self.gate_proj = nn.Linear(D, inter, bias=bias)
        self.up_proj = nn.Linear(D, inter, bias=bias)
        self.down_spike = spiking_input(config)
        self.down_proj = nn.Linear(inter, D, bias=bias)

    def forward(self, x: torch.Tensor, state: SwiGLUState | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, SwiGLUState]:
        u = self.in_spike(x, mask)
        h = F.silu(self.gate_proj(u)) * self.up_proj(u)
        out = self.down_proj(self.down_spike(h, mask))
        self._record_sparsity(("in", self.in_spike), ("down_in", self.down_spike))
        return out, SwiGLUState()


class SpikingMLPState(NamedTuple):
    """State of :class:`SpikingMLP`: ``v [B, I]`` float32, the hidden LIF's membrane potential."""

    v: torch.Tensor


class SpikingMLP(SpikeLMLayer):
    """Spikformer's MLP (Zhou et al. 2023, ICLR), along the token axis:
    ``Norm(W_2 LIF(Norm(W_1 x)))`` (the block's output neuron provides Spikformer's second LIF).

    Args: config (``hidden_size`` D, ``intermediate_size`` I, ``spiking_norm``, ``neuron``, ``lif_*``).
    ``forward(x [B, L, D], state: SpikingMLPState | None, mask) -> (out [B, L, D] in x.dtype,
    SpikingMLPState)``. Spike site: ``"hidden"`` (the hidden LIF's spike rate).
    """

    State = SpikingMLPState
    spike_sites = ("hidden",)

    def __init__(self, config):
        super().__init__()
        D, inter = config.hidden_size, config.intermediate_size
        self.fc1 = nn.Linear(D, inter, bias=False)
        self.norm1 = SpikingNorm(config.spiking_norm, inter, config.layer_norm_eps)
        self.lif = make_neuron(config, "lif" if config.neuron == "none" else config.neuron)
        self.fc2 = nn.Linear(inter, D, bias=False)
        self.norm2 = SpikingNorm(config.spiking_norm, D, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, state: SpikingMLPState | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, SpikingMLPState]:
        s, v = fire_tokens(self.lif, self.norm1(self.fc1(x), mask), None if state is None else state.v, mask)
        self.spike_rates["hidden"] = s.detach().float().mean()
        return self.norm2(self.fc2(s.to(x.dtype)), mask), SpikingMLPState(v)
