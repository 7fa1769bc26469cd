"""RWKV-4 channel-mix (SpikeGPT's MLP): ``sigmoid(W_r x_r) * W_v relu(W_k x_k)^2``."""
from __future__ import annotations

import torch
from torch import nn

from .token_shift import mix, token_shift


class RWKV4ChannelMix(nn.Module):
    """RWKV-4 channel-mix (ridgerchu/SpikeGPT ``src/model.py``, ``RWKV_ChannelMix``).

    Args:
        hidden_size: ``D``; intermediate_size: the ``W_k`` width (SpikeGPT: 4 D).
    State: ``shift [B, D]``, the previous token's input.
    """

    state_size = 1

    def __init__(self, hidden_size: int, intermediate_size: int, layer_id: int, num_layers: int):
        super().__init__()
        self.hidden_size, self.layer_id, self.num_layers = hidden_size, layer_id, num_layers
        for name, value in self.rwkv_init_values().items():  # time_mix_k, time_mix_r with their RWKV-4 values
            setattr(self, name, nn.Parameter(value))
        self.key = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.receptance = nn.Linear(hidden_size, hidden_size, bias=False)
        self.value = nn.Linear(intermediate_size, hidden_size, bias=False)

    def rwkv_init_values(self) -> dict[str, torch.Tensor]:
        """RWKV-4's initial mix vectors ``(i / D) ** (1 - layer_id / num_layers)``, by parameter name."""
        ramp = torch.arange(self.hidden_size, dtype=torch.float32) / self.hidden_size
        ratio_1_to_0 = 1.0 - self.layer_id / self.num_layers
        return {"time_mix_k": ramp ** ratio_1_to_0, "time_mix_r": ramp ** ratio_1_to_0}

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """``x [B, L, D]``, ``shift [B, D]`` or None, ``mask [B, L]`` -> ``(out [B, L, D], new shift [B, D])``."""
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        xx = token_shift(x, shift)
        k = torch.square(torch.relu(self.key(mix(x, xx, self.time_mix_k))))
        out = torch.sigmoid(self.receptance(mix(x, xx, self.time_mix_r))) * self.value(k)
        return out, x[:, -1]
