"""SpikingBrain's adaptive-threshold integer spiking neuron, as a torch module."""
from __future__ import annotations

import torch
from torch import nn

from ..kernels.adaptive_spike import adaptive_spike, collapse_train, expand_counts, spike_counts

MODES = ("off", "ste", "expanded")


class AdaptiveSpike(nn.Module):
    """Adaptive spiking on the input of a linear projection (SpikingBrain report, Eqs. 19-23).

    ``v_th = mean(|x|)/k`` per token over the hidden axis, ``s_int = round(x / v_th)``, output
    ``s_int * v_th``.

    Args:
        mode: ``"off"`` (identity), ``"ste"`` (training-time integer spikes, straight-through
            gradient) or ``"expanded"`` (inference: counts expanded into a spike train of
            ``steps`` steps with ``encoding`` and summed back, which must equal ``"ste"``).
        k: threshold divisor (> 0), SpikingBrain default 3.
        max_count: optional clamp of the count.
        steps, encoding: spike-train length and ``"binary" | "ternary" | "bitwise"``.
    Raises:
        ValueError: unknown mode or bad ``k``.
    """

    def __init__(self, mode: str = "ste", k: float = 3.0, max_count: int | None = None, steps: int = 8,
                 encoding: str = "bitwise"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown adaptive spiking mode {mode!r}; accepted: {', '.join(MODES)}")
        if not k > 0:
            raise ValueError(f"adaptive spiking k must be > 0, got {k}")
        self.mode, self.k, self.max_count, self.steps, self.encoding = mode, k, max_count, steps, encoding
        self.last_sparsity: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., D]`` -> same shape and dtype."""
        if self.mode == "off":
            return x
        if self.mode == "ste":
            return adaptive_spike(x, self.k, self.max_count)
        counts, v_th = spike_counts(x, self.k, self.max_count)
        train = expand_counts(counts, self.steps, self.encoding)
        return (collapse_train(train, self.encoding).float() * v_th).to(x.dtype)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, k={self.k}, max_count={self.max_count}"
