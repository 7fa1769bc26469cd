"""RWKV-4 channel-mix (SpikeGPT's MLP): ``sigmoid(W_r x_r) * W_v relu(W_k x_k)^2``."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..kernels.token_shift import token_shift_mix
from .base import SpikeLMLayer


class ChannelMixState(NamedTuple):
    """State of :class:`RWKV4ChannelMix`: ``shift [B, D]``, the previous token's (masked) input
    in the activation dtype."""

    shift: torch.Tensor


class RWKV4ChannelMix(SpikeLMLayer):
    """RWKV-4 channel-mix (SpikeGPT, Zhu et al. 2023; ridgerchu/SpikeGPT ``src/model.py``,
    ``RWKV_ChannelMix``): ``xk, xr = mix(x, shift(x), mu_k|mu_r)``,
    ``out = sigmoid(W_r xr) * W_v relu(W_k xk)^2``.

    Args:
        hidden_size: ``D``; intermediate_size: the ``W_k`` width (SpikeGPT: 4 D).
        layer_id, num_layers: position in the stack (for the RWKV init).
    ``forward(x [B, L, D], state: ChannelMixState | None, mask [B, L] | None) -> (out [B, L, D],
    ChannelMixState)``.
    """

    State = ChannelMixState

    def __init__(self, hidden_size: int, intermediate_size: int, layer_id: int, num_layers: int):
        super().__init__()
        self.hidden_size, self.layer_id, self.num_layers = hidden_size, layer_id, num_layers
        for name, value in self.init_values().items():  # time_mix_k, time_mix_r with their RWKV-4 values
            setattr(self, name, nn.Parameter(value))
        self.key = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.receptance = nn.Linear(hidden_size, hidden_size, bias=False)
        self.value = nn.Linear(intermediate_size, hidden_size, bias=False)

    @classmethod
    def from_config(cls, config, layer_id: int) -> "RWKV4ChannelMix":
        return cls(config.hidden_size, config.intermediate_size, layer_id, config.num_hidden_layers)

    def init_values(self) -> dict[str, torch.Tensor]:
        """RWKV-4's initial mix vectors ``(i / D) ** (1 - layer_id / num_layers)`` (``[D]`` float32),
        by parameter name."""
        ramp = torch.arange(self.hidden_size, dtype=torch.float32) / self.hidden_size
        ratio_1_to_0 = 1.0 - self.layer_id / self.num_layers
        return {"time_mix_k": ramp ** ratio_1_to_0, "time_mix_r": ramp ** ratio_1_to_0}

    def forward(self, x: torch.Tensor, state: ChannelMixState | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ChannelMixState]:
        """``x [B, L, D]``, optional state, ``mask [B, L]`` -> ``(out [B, L, D], new state)``."""
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        xk, xr = token_shift_mix(x, None if state is None else state.shift, (self.time_mix_k, self.time_mix_r))
        k = torch.square(torch.relu(self.key(xk)))
        out = torch.sigmoid(self.receptance(xr)) * self.value(k)
        return out, ChannelMixState(x[:, -1])
