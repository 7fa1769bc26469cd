"""Input validation of adaptive spiking, shared by the public ``adaptive_spike`` and the Triton entry points.

Pure torch (no Triton import), so ``spikelm`` imports where Triton is not installed.
"""
from __future__ import annotations

import torch

from ..dispatch import check_tensor


def check_adaptive_inputs(x: torch.Tensor, k: float, max_count: int | None) -> None:
    """Validate ``x [..., D]`` (float32/float16/bfloat16/float64, ``D > 0``), ``k > 0`` and ``max_count``.

    Raises:
        TypeError: ``x`` not a float tensor of those dtypes.
        ValueError: ``k <= 0``, ``max_count < 1`` (None means no clamp), a 0-dim ``x`` or an
            empty last (hidden) axis.
    """
    check_tensor("x", x)
    if not k > 0:
        raise ValueError(f"adaptive spiking k must be > 0, got {k}")
    if max_count is not None and max_count < 1:
        raise ValueError(f"max_count must be >= 1 or None, got {max_count}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x needs a non-empty last (hidden) axis, got shape {tuple(x.shape)}")
