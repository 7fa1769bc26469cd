"""Adaptive-threshold integer spiking (SpikingBrain): ``adaptive_spike`` and spike-train helpers.

Dispatch (``spikelm.kernels.dispatch``): the Triton kernels of ``fused.py`` where
:func:`~spikelm.kernels.dispatch.use_triton` says so (CUDA tensors, and CPU tensors under ``TRITON_INTERPRET=1``, unless the backend is ``"torch"``)
and that module imports, else the pure-torch ``naive.py``.
"""
from __future__ import annotations

import torch

from ..custom_op import opaque_op
from ..dispatch import check_tensor, use_triton
from .checks import check_adaptive_inputs
from .naive import (
    ENCODINGS,
    adaptive_spike_naive,
    adaptive_threshold,
    collapse_train,
    count_nonzero_spikes,
    expand_counts,
)
from .naive import spike_counts as spike_counts_naive

__all__ = [
    "ENCODINGS",
    "adaptive_spike",
    "adaptive_spike_naive",
    "adaptive_threshold",
    "collapse_train",
    "count_nonzero_spikes",
    "expand_counts",
    "spike_counts",
]


def _triton_impl(name: str = "adaptive_spike_fused"):
    try:
        from . import fused
    except ImportError:
        return None
    return getattr(fused, name, None)


def spike_counts(x: torch.Tensor, k: float = 3.0, max_count: int | None = None, *,
                 backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer spike counts and thresholds of ``x [..., D]``: ``(s_int [..., D] int32, v_th [..., 1] fp32)``.

    SpikingBrain report (Pan et al. 2025, Eqs. 19-23): ``s_int = round(x / v_th)``, ``v_th =
    mean|x| / k`` per row. Dispatched like :func:`adaptive_spike` (same ``backend``), so
    ``counts * v_th`` equals its output bit for bit on every device (the threshold's summation
    order is the same). No gradient.

    Raises:
        TypeError: ``x`` not a float32/float16/bfloat16/float64 tensor.
        ValueError: an unknown ``backend``; on the Triton path also the checks of
            :func:`adaptive_spike`. TritonUnavailableError: ``backend="triton"`` where
            Triton cannot run.
    """
    check_tensor("x", x)
    if use_triton(x, backend):
        impl = _triton_impl("spike_counts_fused")
        if impl is not None:
            return impl(x, k, max_count)
    return spike_counts_naive(x, k, max_count)


def adaptive_spike(x: torch.Tensor, k: float = 3.0, max_count: int | None = None, *,
                   backend: str | None = None) -> torch.Tensor:
    """SpikingBrain adaptive spiking: ``round(x / v_th) * v_th`` with ``v_th = mean|x| / k`` per row.

    Args:
        x: ``[..., D]`` activations (fp32/fp16/bf16); the threshold is taken over the last axis.
        k: threshold divisor (> 0); larger k gives finer steps and more spikes (SpikingBrain: 3).
        max_count: clamp the integer spike count to ``[-max_count, max_count]`` (None: no clamp).
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or None for the current setting
            (``spikelm.kernels.dispatch``).
    Returns:
        Tensor of ``x``'s shape and dtype. Backward is straight-through (identity).
    Raises:
        TypeError: non-float ``x``. ValueError: ``k <= 0``, ``max_count < 1``, empty last axis
        (``checks.check_adaptive_inputs``), an unknown ``backend``.
        TritonUnavailableError: ``backend="triton"`` where Triton cannot run (not installed, a
            CPU tensor without ``TRITON_INTERPRET=1``).
    """
    check_adaptive_inputs(x, k, max_count)
    if use_triton(x, backend) and _triton_impl() is not None:
        # under torch.compile the Triton kernel is the custom op spikelm::adaptive_spike; the
        # torch path is elementwise and row means, which the compiler traces and fuses
        return _ADAPTIVE_OP(x, k, max_count)[0] if torch.compiler.is_compiling() else _triton_impl()(x, k, max_count)
    return adaptive_spike_naive(x, k, max_count)


_ADAPTIVE_OP = opaque_op("adaptive_spike", lambda x, k, max_count: (_triton_impl()(x, k, max_count),),
                         fake=lambda x, k, max_count: (torch.empty_like(x),))
"""The Triton ``adaptive_spike_fused`` as the custom op ``spikelm::adaptive_spike``."""
