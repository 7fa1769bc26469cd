"""Input validation of the WKV-4 op, shared by the public ``wkv4`` and the Triton entry point."""
from __future__ import annotations

import torch

from ..dispatch import check_same_device, check_tensor


def check_wkv4_inputs(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state) -> None:
    """Validate ``w, u [D]``, ``k, v [B, L, D]`` and an optional ``(aa, bb, pp)`` state ``[B, D]``.

    Raises:
        TypeError: a non-float (or unsupported dtype) input, ``k``/``v`` of different dtypes,
            state tensors that are not float32/float64 tensors.
        ValueError: ``k``/``v`` not ``[B, L, D]`` or of different shapes, ``L == 0``, ``w``/``u``
            not ``[D]``, a state of the wrong arity or shape, tensors on different devices.
    """
    for name, t in (("w", w), ("u", u), ("k", k), ("v", v)):
        check_tensor(name, t)
    if k.dtype != v.dtype:
        raise TypeError(f"k and v must share a dtype, got {k.dtype} and {v.dtype}")
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"k and v must both be [B, L, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    B, L, D = k.shape
    if L == 0:
        raise ValueError("k and v have an empty sequence axis (L = 0)")
    if w.shape != (D,) or u.shape != (D,):
        raise ValueError(f"w and u must be [D] = [{D}], got {tuple(w.shape)} and {tuple(u.shape)}")
    named_state = {}
    if state is not None:
        if len(state) != 3 or any(not isinstance(s, torch.Tensor) or s.shape != (B, D) for s in state):
            raise ValueError(f"state must be (aa, bb, pp), each [B, D] = [{B}, {D}]")
        named_state = dict(zip(("aa", "bb", "pp"), state))
        for name, s in named_state.items():
            check_tensor(f"state {name}", s, dtypes=(torch.float32, torch.float64))
    check_same_device(w=w, u=u, k=k, v=v, **named_state)
