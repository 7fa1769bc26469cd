"""Input validation of the LIF op, shared by the public ``lif_multistep`` and the Triton entry point.

Pure torch (no Triton import), so ``spikelm`` imports where Triton is not installed.
"""
from __future__ import annotations

import torch

from ..dispatch import check_same_device, check_tensor
from .surrogate import check_surrogate


def tau_value(tau: float | torch.Tensor) -> float:
    """``tau`` as a Python float (a one-element tensor is read without its gradient)."""
    return float(tau.detach()) if isinstance(tau, torch.Tensor) else float(tau)


def check_lif_inputs(x: torch.Tensor, v0: torch.Tensor | None, tau: float | torch.Tensor, v_th: float,
                     surrogate: str, alpha: float) -> None:
    """Validate the arguments of a multi-step LIF call (``lif_multistep``, ``lif_fused_recurrent``).

    ``x [T, ...]`` (T > 0), ``v0`` of shape ``x.shape[1:]`` or None, ``tau`` a number or a
    one-element tensor, all on one device.

    Raises:
        TypeError: ``x`` or ``v0`` not a float32/float16/bfloat16/float64 tensor.
        ValueError: empty time axis, ``v0`` shape mismatch, a ``tau`` tensor with more than one
            element, tensors on different devices, ``tau <= 0``, ``v_th <= 0``, unknown
            surrogate or ``alpha <= 0`` (``surrogate.check_surrogate``).
    """
    check_tensor("x", x)
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty leading time axis, got shape {tuple(x.shape)}")
    if v0 is not None:
        check_tensor("v0", v0)
        if v0.shape != x.shape[1:]:
            raise ValueError(f"v0 must have shape x.shape[1:] = {tuple(x.shape[1:])}, got {tuple(v0.shape)}")
    if isinstance(tau, torch.Tensor) and tau.numel() != 1:
        raise ValueError(f"tau must be a number or a one-element tensor, got shape {tuple(tau.shape)}")
    check_same_device(x=x, v0=v0, tau=tau if isinstance(tau, torch.Tensor) else None)
    # a tensor tau (PLIF: 1 / sigmoid(w) > 1 by construction) is not read here: reading it would
    # be a host sync per call on a GPU, and a graph break under torch.compile
    if not isinstance(tau, torch.Tensor) and not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if not v_th > 0:
        raise ValueError(f"v_th must be > 0, got {v_th}")
    check_surrogate(surrogate, alpha)
