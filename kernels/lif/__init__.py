"""Multi-step LIF / PLIF neuron op: ``lif_multistep``.

Dispatch (DESIGN.md section 4): the Triton kernel on CUDA (and on CPU under
``TRITON_INTERPRET=1``) when one is installed in this package, else the torch path
``torch_loop.LIFTorchFunction``. ``naive.lif_naive`` is the reference used by tests.
"""
from __future__ import annotations

import torch

from ..dispatch import check_same_device, check_tensor, use_triton
from .naive import lif_naive
from .surrogate import SURROGATES, check_surrogate, heaviside, surrogate_grad
from .torch_loop import LIFTorchFunction

__all__ = ["lif_multistep", "lif_naive", "heaviside", "surrogate_grad", "SURROGATES"]


def _triton_impl():
    try:
        from .fused_recurrent import lif_fused_recurrent  # provided by the Triton kernel module
    except ImportError:
        return None
    return lif_fused_recurrent


def lif_multistep(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    tau: float | torch.Tensor = 2.0,
    v_th: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str = "atan",
    alpha: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a LIF neuron over ``T`` time steps (SpikingJelly ``LIFNode``, ``step_mode='m'``).

    Args:
        x: ``[T, ...]`` input current, fp32/fp16/bf16; the leading axis is time (simulation
            steps, or tokens when the neuron runs along the sequence).
        v0: initial membrane potential ``v`` of shape ``x.shape[1:]`` (any float dtype), or
            None to start at rest (``v_reset``; 0 for soft reset). Passing the ``v_T`` of a
            previous call continues the dynamics exactly (chunked prefill, decoding).
        tau: membrane time constant in steps, > 0 (float, or a 0-dim tensor for PLIF, whose
            gradient is then returned).
        v_th: firing threshold ``v_th`` > 0.
        v_reset: reset potential for a hard reset, or None for a soft reset (subtract v_th).
        decay_input: whether the input is divided by ``tau`` too.
        detach_reset: stop the gradient through the reset.
        surrogate: ``"atan"`` or ``"sigmoid"``; ``alpha`` its sharpness.
    Returns:
        ``(spikes, v_T)``: spikes ``[T, ...]`` in ``x.dtype`` with values in {0, 1}, and the
        final membrane potential ``x.shape[1:]`` in float32 (the state precision).
    Raises:
        TypeError: ``x`` not a float tensor.
        ValueError: empty time axis, ``v0`` shape or device mismatch, ``tau <= 0``,
            ``v_th <= 0``, unknown surrogate or ``alpha <= 0``.
    """
    check_tensor("x", x)
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty leading time axis, got shape {tuple(x.shape)}")
    if v0 is not None:
        check_tensor("v0", v0)
        if v0.shape != x.shape[1:]:
            raise ValueError(f"v0 must have shape x.shape[1:] = {tuple(x.shape[1:])}, got {tuple(v0.shape)}")
    if isinstance(tau, torch.Tensor):
        if tau.numel() != 1:
            raise ValueError(f"tau must be a number or a one-element tensor, got shape {tuple(tau.shape)}")
        tau = tau.reshape(())
    check_same_device(x=x, v0=v0, tau=tau if isinstance(tau, torch.Tensor) else None)
    if not float(tau.detach() if isinstance(tau, torch.Tensor) else tau) > 0:
        raise ValueError(f"tau must be > 0, got {float(tau)}")
    if not v_th > 0:
        raise ValueError(f"v_th must be > 0, got {v_th}")
    check_surrogate(surrogate, alpha)
    shape = x.shape
    x2 = x.reshape(shape[0], -1)
    if v0 is None:
        v0 = torch.full((x2.shape[1],), 0.0 if v_reset is None else float(v_reset), device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    else:
        v0 = v0.reshape(-1)
    impl = _triton_impl() if use_triton(x) else None
    if impl is not None:
        spikes, v = impl(x2.contiguous(), v0.contiguous(), tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha)
    else:
        spikes, v = LIFTorchFunction.apply(x2, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha)
    return spikes.reshape(shape), v.reshape(shape[1:])
