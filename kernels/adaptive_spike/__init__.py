"""Adaptive-threshold integer spiking (SpikingBrain): ``adaptive_spike`` and spike-train helpers."""
from __future__ import annotations

import torch

from ..dispatch import check_tensor, use_triton
from .naive import (ENCODINGS, adaptive_spike_naive, adaptive_threshold, collapse_train, count_nonzero_spikes,
                    expand_counts)
from .naive import spike_counts as spike_counts_naive

__all__ = ["adaptive_spike", "adaptive_spike_naive", "adaptive_threshold", "spike_counts", "expand_counts",
           "collapse_train", "count_nonzero_spikes", "ENCODINGS"]


def _triton_impl(name: str = "adaptive_spike_fused"):
    try:
        from . import fused
    except ImportError:
        return None
    return getattr(fused, name, None)


def spike_counts(x: torch.Tensor, k: float = 3.0, max_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer spike counts and thresholds of ``x [..., D]``: ``(s_int [..., D] int32, v_th [..., 1] fp32)``.

    Dispatched like :func:`adaptive_spike`, so ``counts * v_th`` equals its output bit for bit
    on every device (the threshold's summation order is the same).
    """
    check_tensor("x", x)
    if use_triton(x):
        impl = _triton_impl("spike_counts_fused")
        if impl is not None:
            return impl(x, k, max_count)
    return spike_counts_naive(x, k, max_count)


def adaptive_spike(x: torch.Tensor, k: float = 3.0, max_count: int | None = None) -> torch.Tensor:
    """SpikingBrain adaptive spiking: ``round(x / v_th) * v_th`` with ``v_th = mean|x| / k`` per row.

    Args:
        x: ``[..., D]`` activations (fp32/fp16/bf16); the threshold is taken over the last axis.
        k: threshold divisor (> 0); larger k gives finer steps and more spikes (SpikingBrain: 3).
        max_count: clamp the integer spike count to ``[-max_count, max_count]`` (None: no clamp).
    Returns:
        Tensor of ``x``'s shape and dtype. Backward is straight-through (identity).
    Raises:
        TypeError: non-float ``x``. ValueError: ``k <= 0``, ``max_count < 1``, empty last axis.
    """
    check_tensor("x", x)
    if not k > 0:
        raise ValueError(f"adaptive spiking k must be > 0, got {k}")
    if max_count is not None and max_count < 1:
        raise ValueError(f"max_count must be >= 1 or None, got {max_count}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x needs a non-empty last (hidden) axis, got shape {tuple(x.shape)}")
    if use_triton(x):
        impl = _triton_impl()
        if impl is not None:
            return impl(x, k, max_count)
    return adaptive_spike_naive(x, k, max_count)
