"""Multi-step LIF / PLIF neuron op: ``lif_multistep``.

Dispatch (``spikelm.kernels.dispatch``): the Triton kernel ``fused_recurrent.lif_fused_recurrent``
where :func:`~spikelm.kernels.dispatch.use_triton` says so (CUDA tensors, and CPU tensors under ``TRITON_INTERPRET=1``, unless the backend is ``"torch"``)
and that module imports, else the torch path ``torch_loop.LIFTorchFunction``.
``naive.lif_naive`` is the reference used by tests.
"""
from __future__ import annotations

import torch

from ..custom_op import opaque_op
from ..dispatch import use_triton
from .checks import check_lif_inputs
from .naive import lif_naive
from .surrogate import SURROGATES, check_surrogate, heaviside, surrogate_grad
from .torch_loop import LIFTorchFunction, lif_torch_backward, lif_torch_forward

__all__ = ["SURROGATES", "check_surrogate", "heaviside", "lif_multistep", "lif_naive", "surrogate_grad"]


def _triton_impl():
    try:
        from .fused_recurrent import (
            lif_fused_recurrent,  # provided by the Triton kernel module
        )
    except ImportError:
        return None
    return lif_fused_recurrent


def lif_multistep(x: torch.Tensor, v0: torch.Tensor | None = None, tau: float | torch.Tensor = 2.0,
                  v_th: float = 1.0, v_reset: float | None = 0.0, decay_input: bool = True, detach_reset: bool = False,
                  surrogate: str = "atan", alpha: float = 2.0, *, backend: str | None = None
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
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or None for the current setting
            (``spikelm.kernels.dispatch``). float64 input and ``N = 0`` use the torch path.
    Returns:
        ``(spikes, v_T)``: spikes ``[T, ...]`` in ``x.dtype`` with values in {0, 1}, and the
        final membrane potential ``x.shape[1:]`` in float32 (the state precision).
    Raises:
        TypeError: ``x`` not a float tensor.
        ValueError: empty time axis, ``v0`` shape or device mismatch, ``tau <= 0``,
            ``v_th <= 0``, unknown surrogate or ``alpha <= 0``; an unknown ``backend``.
        TritonUnavailableError: ``backend="triton"`` where Triton cannot run (not installed, a
            CPU tensor without ``TRITON_INTERPRET=1``).
    """
    check_lif_inputs(x, v0, tau, v_th, surrogate, alpha)
    if isinstance(tau, torch.Tensor):
        tau = tau.reshape(())
    shape = x.shape
    x2 = x.reshape(shape[0], -1)
    if v0 is None:
        v0 = torch.full((x2.shape[1],), 0.0 if v_reset is None else float(v_reset), device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    else:
        v0 = v0.reshape(-1)
    args = (x2, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha, backend)
    if not torch.compiler.is_compiling():
        spikes, v = _lif_2d(*args)
    elif _triton_path(x2, backend):
        spikes, v = _LIF_OP(*args)
    else:  # the torch loop, with its saved-tensor backward
        spikes, v = _LIF_TORCH_OP(*args[:-1])
    return spikes.reshape(shape), v.reshape(shape[1:])


def _triton_path(x2: torch.Tensor, backend: str | None) -> bool:
    """Whether ``_lif_2d`` runs the Triton kernel on ``x2`` (else the torch loop)."""
    return use_triton(x2, backend) and _triton_impl() is not None


def _lif_2d(x2, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha, backend):
    """``lif_multistep`` on ``x2 [T, N]``, ``v0 [N]``: the Triton kernel or the torch loop."""
    if _triton_path(x2, backend):
        return _triton_impl()(x2.contiguous(), v0.contiguous(), tau, v_th, v_reset, decay_input, detach_reset,
                              surrogate, alpha)
    return LIFTorchFunction.apply(x2, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha)


def _lif_torch_fwd(x2, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha):
    """The torch loop's forward for ``spikelm::lif_torch``: ``((spikes [T, N], v_T [N]), (h_all [T, N],))``."""
    spikes, v, h_all = lif_torch_forward(x2, v0, tau, v_th, v_reset, decay_input)
    return (spikes, v), (h_all,)


def _lif_torch_bwd(args, saved, grads, needs):
    """The torch loop's hand-written backward for ``spikelm::lif_torch`` (``opaque_op``'s
    ``backward``): gradients of ``(x2, v0, tau)``; ``tau`` is read as a float again (a PLIF tensor)."""
    x2, v0, tau, *cfg = args
    gx, g_v0, g_tau = lif_torch_backward(saved[0], x2, v0, tau, float(tau), tuple(cfg), grads[0], grads[1],
                                         needs[1], needs[2])
    return (gx, g_v0, g_tau) + (None,) * len(cfg)


def _lif_fake(x2, v0, *rest):
    return torch.empty_like(x2), torch.empty(v0.shape, dtype=_acc(x2), device=x2.device)


def _acc(x2: torch.Tensor) -> torch.dtype:
    return torch.float64 if x2.dtype == torch.float64 else torch.float32


_LIF_OP = opaque_op("lif_multistep", _lif_2d, fake=_lif_fake)
"""``_lif_2d`` as the custom op ``spikelm::lif_multistep`` (``spikelm.kernels.custom_op``; the
Triton path under ``torch.compile``; its backward recomputes the forward)."""

_LIF_TORCH_OP = opaque_op("lif_torch", _lif_torch_fwd, fake=_lif_fake, backward=_lif_torch_bwd,
                          fake_saved=lambda x2, *rest: (torch.empty(x2.shape, dtype=_acc(x2), device=x2.device),))
"""The torch loop as the custom op ``spikelm::lif_torch`` with a saved-tensor backward (the
pre-spike potentials ``h_all``; used under ``torch.compile`` off the Triton path)."""
