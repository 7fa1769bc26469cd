"""RWKV-4 time-mix (SpikeGPT's token mixer): token shift, WKV, receptance gate."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..kernels.token_shift import token_shift_mix
from ..kernels.wkv4 import wkv4_init_state
from ..kernels.wkv4.gated import wkv4_gated
from .base import SpikeLMLayer

PAD_KEY = -1e30
"""Key given to padded positions: ``e^k`` underflows to exactly 0 and the first real token's
decay of ``e^{-1e30 - ...}`` wipes whatever the pad wrote, so pads leave no trace (exact)."""


class RWKV4State(NamedTuple):
    """State of :class:`RWKV4TimeMix`, every field ``[B, D]``.

    Attributes:
        shift: the previous token's (masked) input, in the activation dtype (token shift).
        aa, bb, pp: the WKV running numerator, denominator and exponent offset, float32
            (RWKV-4's numerically stable form; ``spikelm.kernels.wkv4``).
    """

    shift: torch.Tensor
    aa: torch.Tensor
    bb: torch.Tensor
    pp: torch.Tensor


class RWKV4TimeMix(SpikeLMLayer):
    """RWKV-4 time-mix of SpikeGPT (Zhu et al. 2023; ridgerchu/SpikeGPT ``src/model.py``,
    ``RWKV_TimeMix``; RWKV-4, Peng et al. 2023).

    ``xk, xv, xr = mix(x, shift(x), mu_k|mu_v|mu_r)``; ``k, v, r = W_k xk, W_v xv, W_r xr``;
    ``out = W_o(sigmoid(r) * wkv(w = exp(time_decay), u = time_first, k, v))`` with
    ``wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (same without v)``.

    Args:
        hidden_size: ``D``. layer_id, num_layers: position in the stack (for the RWKV init).
    ``forward(x [B, L, D], state: RWKV4State | None, mask [B, L] | None) -> (out [B, L, D] in
    x.dtype, RWKV4State)``.
    """

    State = RWKV4State
    embed_norm = True  # SpikeGPT normalises the embedding before its first (RWKV) block

    def __init__(self, hidden_size: int, layer_id: int, num_layers: int):
        super().__init__()
        D = self.hidden_size = hidden_size
        self.layer_id, self.num_layers = layer_id, num_layers
        # time_decay, time_first, time_mix_k/v/r: created with their RWKV-4 values, so a module
        # built on its own (outside a PreTrainedModel's init) is usable too
        for name, value in self.init_values().items():
            setattr(self, name, nn.Parameter(value))
        self.key = nn.Linear(D, D, bias=False)
        self.value = nn.Linear(D, D, bias=False)
        self.receptance = nn.Linear(D, D, bias=False)
        self.output = nn.Linear(D, D, bias=False)

    @classmethod
    def from_config(cls, config, layer_id: int) -> "RWKV4TimeMix":
        return cls(config.hidden_size, layer_id, config.num_hidden_layers)

    def init_values(self) -> dict[str, torch.Tensor]:
        """RWKV-4's initial decay, bonus and mix vectors ``[D]`` float32 (SpikeGPT
        ``RWKV_TimeMix.__init__``), by parameter name."""
        D = self.hidden_size
        ratio_0_to_1 = self.layer_id / max(self.num_layers - 1, 1)
        ratio_1_to_0 = 1.0 - self.layer_id / self.num_layers
        h = torch.arange(D, dtype=torch.float32)
        zigzag = ((h.long() + 1) % 3 - 1).float() * 0.5
        ramp = h / D
        return {
            "time_decay": -5 + 8 * (h / max(D - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1),
            "time_first": torch.full_like(h, math.log(0.3)) + zigzag,
            "time_mix_k": ramp ** ratio_1_to_0,
            "time_mix_v": ramp ** ratio_1_to_0 + 0.3 * ratio_0_to_1,
            "time_mix_r": ramp ** (0.5 * ratio_1_to_0),
        }

    def init_state(self, batch: int, device, dtype) -> RWKV4State:
        """Empty state: ``shift`` zeros ``[B, D]`` in ``dtype``; ``aa, bb, pp`` as ``wkv4_init_state``."""
        return RWKV4State(torch.zeros(batch, self.time_decay.numel(), device=device, dtype=dtype),
                          *wkv4_init_state(batch, self.time_decay.numel(), device))

    def forward(self, x: torch.Tensor, state: RWKV4State | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, RWKV4State]:
        """``x [B, L, D]``, optional state, ``mask [B, L]`` (1 = token, 0 = pad) ->
        ``(out [B, L, D], new state)``."""
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        # token shift + the three mixes in one op (one fused kernel on the Triton path)
        xk, xv, xr = token_shift_mix(x, None if state is None else state.shift,
                                     (self.time_mix_k, self.time_mix_v, self.time_mix_r))
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
        if mask is not None:
            k = k.masked_fill(~mask[..., None].bool(), PAD_KEY)
        # sigmoid(r) * wkv: the gate in the WKV kernel's epilogue on the Triton path
        rwkv, (aa, bb, pp) = wkv4_gated(torch.exp(self.time_decay), self.time_first, k, v, r,
                                        None if state is None else (state.aa, state.bb, state.pp))
        return self.output(rwkv), RWKV4State(x[:, -1], aa, bb, pp)
