"""Block-output LIF fused with the residual add: ``lif_residual`` = ``res + LIF(x)`` and the spike rate.

SpikeGPT (Zhu et al. 2023) adds the spikes of a LIF neuron (SpikingJelly ``LIFNode`` semantics,
``naive.py``) run along the tokens to the residual stream after each sub-block. The Triton path
(``fused_residual.py``) does it in one kernel each way; the torch path (the CPU training path)
is ``lif_multistep`` followed by the add and the rate exactly as the block wrote them before
(``spikelm.layers.common.fire_tokens``), so its values are those of the unfused code bit for bit.
Under ``torch.compile`` the Triton path is the custom op ``spikelm::lif_residual``; the torch
path is ``lif_multistep`` (its own custom op) and traced elementwise code.
"""
from __future__ import annotations

import torch

from ..custom_op import opaque_op
from ..dispatch import use_triton
from . import lif_multistep
from .checks import check_lif_inputs

__all__ = ["lif_residual"]

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_impl():
    try:
        from .fused_residual import lif_residual_fused
    except ImportError:
        return None
    return lif_residual_fused


def lif_residual(res: torch.Tensor, x: torch.Tensor, v0: torch.Tensor | None = None, tau: float | torch.Tensor = 2.0,
                 v_th: float = 1.0, v_reset: float | None = 0.0, decay_input: bool = True,
                 detach_reset: bool = False, surrogate: str = "atan", alpha: float = 2.0, *, time_dim: int = 0,
                 backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``res + spikes`` of a multi-step LIF neuron over ``x``, its final potential and spike rate
    (SpikingJelly ``LIFNode``; SpikeGPT's block output, Zhu et al. 2023; module docstring).

    Args:
        res: the residual stream, of ``x``'s shape, fp32/fp16/bf16 (the output's dtype).
        x: the neuron's input current: ``[T, ...]`` (``time_dim=0``) or ``[B, T, ...]``
            (``time_dim=1``: the block's ``[B, L, D]``, tokens as time steps), a float tensor.
        v0: initial potential of ``x``'s shape without the time axis (``[...]`` or ``[B, ...]``),
            any float dtype, or None to start at rest; a previous call's ``v_T`` continues exactly.
        tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha: as
            :func:`spikelm.kernels.lif.lif_multistep` (``tau`` a 0-dim tensor for PLIF).
        time_dim: 0 or 1, the time axis of ``x``/``res``.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or None for the current setting
            (``spikelm.kernels.dispatch``). float64 and empty tensors use the torch path.
    Returns:
        ``(y, v_T, rate)``: ``y = res + spikes.to(res.dtype)`` of ``res``'s shape and dtype
        (differentiable in ``res``, ``x``, ``v0``, a tensor ``tau``); ``v_T`` the final potential
        (float32, shape of ``v0``); ``rate`` the mean of the spikes over every element, a 0-dim
        float32 tensor (no gradient, no host sync; the spike count is ``rate * x.numel()``).
    Raises:
        TypeError: non-float ``x``/``res``/``v0``.
        ValueError: ``res`` and ``x`` of different shapes, ``time_dim`` not 0/1 (or 1 on a 1-d
            ``x``), and ``lif_multistep``'s errors (empty time axis, ``v0`` shape, ``tau``,
            ``v_th``, surrogate, devices); an unknown ``backend``.
        TritonUnavailableError: ``backend="triton"`` where Triton cannot run.
    """
    if time_dim not in (0, 1):
        raise ValueError(f"time_dim must be 0 or 1, got {time_dim}")
    if not isinstance(res, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise TypeError("res and x must be torch.Tensors")
    if res.shape != x.shape:
        raise ValueError(f"res and x must have one shape, got {tuple(res.shape)} and {tuple(x.shape)}")
    if time_dim == 1 and x.dim() < 2:
        raise ValueError(f"time_dim=1 needs x of shape [B, T, ...], got {tuple(x.shape)}")
    xt = x.transpose(0, 1) if time_dim == 1 else x  # a view: the time-first shape, for the checks
    check_lif_inputs(xt, v0, tau, v_th, surrogate, alpha)
    if res.dtype not in _TRITON_DTYPES + (torch.float64,) or not res.is_floating_point():
        raise TypeError(f"res has dtype {res.dtype}; accepted: float32, float16, bfloat16, float64")
    fused = (use_triton(x, backend) and x.dtype in _TRITON_DTYPES and res.dtype in _TRITON_DTYPES
             and x.numel() > 0 and res.device == x.device)
    if fused and _triton_impl() is not None:
        O = x.shape[0] if time_dim == 1 else 1
        T = x.shape[time_dim]
        I = x.numel() // (O * T)
        args = (res.contiguous().reshape(O, T, I), x.contiguous().reshape(O, T, I),
                None if v0 is None else v0.contiguous().reshape(-1),
                tau.reshape(()) if isinstance(tau, torch.Tensor) else tau,
                v_th, v_reset, decay_input, detach_reset, surrogate, alpha)
        y, v_T, rate = _LIF_RES_OP(*args) if torch.compiler.is_compiling() else _triton_impl()(*args)
        return y.reshape(res.shape), v_T.reshape(xt.shape[1:]), rate
    # the torch path: the block's unfused code (fire_tokens, then the add and the rate)
    spikes, v_T = lif_multistep(xt.contiguous() if time_dim == 1 else x, v0, tau, v_th, v_reset, decay_input,
                                detach_reset, surrogate, alpha, backend=backend)
    if time_dim == 1:
        spikes = spikes.transpose(0, 1)
    return res + spikes.to(res.dtype), v_T, spikes.detach().float().mean()


def _fake(res, x, v0, *rest):
    O, _, I = x.shape
    return (torch.empty_like(res), torch.empty(O * I, dtype=torch.float32, device=x.device),
            torch.empty((), dtype=torch.float32, device=x.device))


def _contiguous(res, x, v0):
    """The op's ``[O, T, I]`` inputs and ``v0`` contiguous, as the kernels read them
    (``lif_residual_fused`` requires it of eager callers)."""
    return res.contiguous(), x.contiguous(), None if v0 is None else v0.contiguous()


def _op_forward(res, x, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha):
    """``spikelm::lif_residual``'s forward: ``((y, v_T, rate), (h,))``, ``h`` the pre-spike
    potentials that its backward reads (``fused_residual.lif_residual_forward``)."""
    from .fused_residual import lif_residual_forward

    res, x, v0 = _contiguous(res, x, v0)
    y, v_T, rate, h = lif_residual_forward(x, res, v0, tau, v_th, v_reset, decay_input, None, True)
    return (y, v_T, rate), (h,)


def _op_backward(args, saved, grads, needs):
    """``spikelm::lif_residual``'s saved-tensor backward: the backward kernel on ``h``, no second
    forward; ``d res = dy``."""
    from .fused_residual import lif_residual_backward

    res, x, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha = args
    res, x, v0 = _contiguous(res, x, v0)
    g_y, g_v = grads[0], grads[1]
    g_x, g_v0, g_tau = lif_residual_backward(saved[0], x, v0, tau, v_th, v_reset, decay_input, detach_reset,
                                             surrogate, alpha, None, g_y, g_v, needs[1], needs[2], needs[3])
    return (g_y if needs[0] else None, g_x, g_v0, g_tau) + (None,) * 6


_LIF_RES_OP = opaque_op("lif_residual", _op_forward, fake=_fake, backward=_op_backward,
                        fake_saved=lambda res, x, *rest: (torch.empty(x.shape, dtype=torch.float32, device=x.device),))
"""The Triton path as the custom op ``spikelm::lif_residual`` (used under ``torch.compile``),
with a saved-tensor backward: the backward kernel runs on the forward's saved potentials."""
