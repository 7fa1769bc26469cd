"""Input validation of ``token_shift_mix`` (pure torch, no Triton import)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..dispatch import check_same_device, check_tensor

MAX_MIXES = 3
"""Most mix vectors one call takes (time-mix: k, v, r; channel-mix: k, r)."""


def check_token_shift_inputs(x: torch.Tensor, prev: torch.Tensor | None, mus: Sequence[torch.Tensor]) -> None:
    """Validate ``x [B, L, D]`` (L > 0), ``prev [B, D]`` or None and 1..3 ``mus``, each ``[D]``.

    Raises:
        TypeError: a non-float (or unsupported dtype) tensor, ``mus`` not a sequence of tensors.
        ValueError: ``x`` not 3-d or with ``L == 0``, ``prev`` not ``[B, D]``, a ``mu`` not
            ``[D]``, no mix or more than 3, tensors on different devices.
    """
    check_tensor("x", x)
    if x.dim() != 3 or x.shape[1] == 0:
        raise ValueError(f"x must be [B, L, D] with L > 0, got shape {tuple(x.shape)}")
    B, _, D = x.shape
    if prev is not None:
        check_tensor("prev", prev)
        if prev.shape != (B, D):
            raise ValueError(f"prev must be [B, D] = [{B}, {D}], got {tuple(prev.shape)}")
    if isinstance(mus, torch.Tensor) or not isinstance(mus, Sequence):
        raise TypeError("mus must be a tuple or list of [D] tensors")
    if not 1 <= len(mus) <= MAX_MIXES:
        raise ValueError(f"token_shift_mix takes 1 to {MAX_MIXES} mix vectors, got {len(mus)}")
    for i, mu in enumerate(mus):
        check_tensor(f"mus[{i}]", mu)
        if mu.shape != (D,):
            raise ValueError(f"mus[{i}] must be [D] = [{D}], got {tuple(mu.shape)}")
    check_same_device(x=x, prev=prev, **{f"mus[{i}]": mu for i, mu in enumerate(mus)})
