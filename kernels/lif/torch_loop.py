"""Fast torch LIF for CPU: a loop over time with a hand-written backward.

Vectorised over every neuron, sequential only along time, and with an explicit backward
recurrence instead of an autograd graph of ``T`` steps, so it is several times faster than
:func:`~spikelm.kernels.lif.naive.lif_naive` while computing the same values and gradients.
Formulas: see ``naive.py``. Gradients (``c = 1/tau`` with decay_input, ``sg`` = surrogate
derivative at ``h_t - v_th``)::

    dL/dh_t     = gs_t * sg_t + gv_t * dv_t/dh_t
    dv_t/dh_t   = (1 - s_t) + (v_reset - h_t) * sg_t      (hard; the sg term dropped if detach_reset)
                = 1 - v_th * sg_t                          (soft; likewise)
    dL/dx_t     = dL/dh_t * (1/tau if decay_input else 1)
    dL/dv_{t-1} = dL/dh_t * (1 - 1/tau)
    dL/dtau     = sum_t dL/dh_t * dh_t/dtau,  dh/dtau = -(x_t - v_{t-1} + v_reset)/tau^2 (decay_input)
                                               or (v_{t-1} - v_reset)/tau^2 (otherwise)
"""
from __future__ import annotations

import torch

from .surrogate import surrogate_grad


def _v_after(h, s, v_th, v_reset):
    return torch.where(s.bool(), v_reset, h) if v_reset is not None else h - v_th * s


def _lif_scan(drive: torch.Tensor, v0: torch.Tensor, tau: float, v_th: float,
              v_reset: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward recursion ``h_t = drive_t + (1 - 1/tau) v_{t-1}``, ``v_t`` = reset of ``h_t``:
    ``drive [T, N]``, ``v0 [N]`` (both the accumulation dtype) -> ``(h_all [T, N], v_T [N])``."""
    k = 1.0 - 1.0 / float(tau)
    vr = 0.0 if v_reset is None else v_reset
    h_all = torch.empty_like(drive)
    v = v0.clone()
    for t in range(drive.shape[0]):
        h = torch.add(drive[t], v, alpha=k, out=h_all[t])
        v = torch.where(h >= v_th, vr, h) if v_reset is not None else h - v_th * (h >= v_th).float()
    return h_all, v


def _lif_adjoint(a: torch.Tensor, dvdh: torch.Tensor, gv: torch.Tensor, tau: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward recursion ``gh_t = a_t + gv_t dvdh_t``, ``gv_{t-1} = (1 - 1/tau) gh_t``:
    ``a, dvdh [T, N]``, ``gv [N]`` the gradient of ``v_T`` -> ``(gh [T, N], gv_0 [N])`` (that of ``v0``)."""
    k = 1.0 - 1.0 / float(tau)
    gh = torch.empty_like(a)
    for t in range(a.shape[0] - 1, -1, -1):
        torch.addcmul(a[t], gv, dvdh[t], out=gh[t])
        gv = gh[t] * k
    return gh, gv


def lif_torch_forward(x: torch.Tensor, v0: torch.Tensor, tau: float | torch.Tensor, v_th: float,
                      v_reset: float | None, decay_input: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward loop: ``x [T, N]`` (any float dtype), ``v0 [N]``, ``tau`` (float or 0-dim tensor) ->
    ``(spikes [T, N] in x.dtype, v_T [N], h_all [T, N])``, ``v_T`` and the pre-spike potentials
    ``h_all`` in the accumulation dtype (float32; float64 for float64 ``x``). ``h_all`` is all
    that :func:`lif_torch_backward` needs besides the inputs. No checks (``checks.py`` ran)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    tau_f = float(tau)
    vr = 0.0 if v_reset is None else v_reset
    # input drive per step, vectorised over time
    drive = (xf + vr) / tau_f if decay_input else xf + vr / tau_f
    h_all, v = _lif_scan(drive, v0.to(acc), tau_f, v_th, v_reset)
    spikes = (h_all >= v_th).to(x.dtype)
    return spikes, v, h_all


def lif_torch_backward(h_all: torch.Tensor, x: torch.Tensor, v0: torch.Tensor, tau: float | torch.Tensor,
                       tau_f: float, cfg: tuple, g_spikes: torch.Tensor | None, g_v: torch.Tensor | None,
                       need_v0: bool, need_tau: bool
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The backward recurrence (module docstring) from what :func:`lif_torch_forward` returned.

    Args:
        h_all: ``[T, N]`` pre-spike potentials (float32/float64), from the forward.
        x, v0, tau: the forward's inputs (``tau`` a float, or the PLIF 0-dim tensor).
        tau_f: ``float(tau)`` as the forward read it.
        cfg: ``(v_th, v_reset, decay_input, detach_reset, surrogate, alpha)``.
        g_spikes: ``[T, N]`` gradient of the spikes, or None; g_v: ``[N]`` of ``v_T``, or None.
        need_v0, need_tau: whether to return those gradients (``tau`` a tensor for the latter).
    Returns:
        ``(g_x [T, N] in x.dtype, g_v0 [N] in v0.dtype or None, g_tau 0-dim in tau.dtype or None)``.
    """
    v_th, v_reset, decay_input, detach_reset, surrogate, alpha = cfg
    vr = 0.0 if v_reset is None else v_reset
    s = (h_all >= v_th).to(h_all.dtype)
    sg = surrogate_grad(h_all - v_th, surrogate, alpha)
    if v_reset is not None:
        dvdh = 1.0 - s
        if not detach_reset:
            dvdh = dvdh + (vr - h_all) * sg
    else:
        dvdh = torch.ones_like(h_all) if detach_reset else 1.0 - v_th * sg
    a = g_spikes.to(h_all.dtype) * sg if g_spikes is not None else torch.zeros_like(h_all)
    gv = g_v.to(h_all.dtype) if g_v is not None else torch.zeros_like(h_all[0])
    gh, gv = _lif_adjoint(a, dvdh, gv, tau_f)
    gx = gh / tau_f if decay_input else gh
    g_tau = None
    if need_tau and isinstance(tau, torch.Tensor):
        xf = x.to(h_all.dtype)
        v_prev = torch.empty_like(h_all)
        v_prev[0] = v0
        v_prev[1:] = _v_after(h_all[:-1], s[:-1], v_th, v_reset)
        dh_dtau = -(xf - v_prev + vr) if decay_input else (v_prev - vr)
        g_tau = (gh * dh_dtau).sum() / tau_f**2
        g_tau = g_tau.to(tau.dtype)
    g_v0 = gv.to(v0.dtype) if need_v0 else None
    return gx.to(x.dtype), g_v0, g_tau


class LIFTorchFunction(torch.autograd.Function):
    """``(x [T, N], v0 [N], tau) -> (spikes [T, N] in x.dtype, v_T [N] fp32)``; fp32 math inside (fp64 for fp64 input).

    :func:`lif_torch_forward` and :func:`lif_torch_backward` with autograd's bookkeeping."""

    @staticmethod
    def forward(ctx, x, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha):
        spikes, v, h_all = lif_torch_forward(x, v0, tau, v_th, v_reset, decay_input)
        ctx.save_for_backward(h_all, x, v0, *([tau] if isinstance(tau, torch.Tensor) else []))
        ctx.tau_f = float(tau)  # read once here (a PLIF tau tensor), not again in backward
        ctx.cfg = (v_th, v_reset, decay_input, detach_reset, surrogate, alpha)
        return spikes, v

    @staticmethod
    def backward(ctx, g_spikes, g_v):
        h_all, x, v0, *tau = ctx.saved_tensors
        gx, g_v0, g_tau = lif_torch_backward(h_all, x, v0, tau[0] if tau else ctx.tau_f, ctx.tau_f, ctx.cfg,
                                             g_spikes, g_v, ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        return gx, g_v0, g_tau, None, None, None, None, None, None
