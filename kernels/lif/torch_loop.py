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


class LIFTorchFunction(torch.autograd.Function):
    """``(x [T, N], v0 [N], tau) -> (spikes [T, N] in x.dtype, v_T [N] fp32)``; fp32 math inside (fp64 for fp64 input)."""

    @staticmethod
    def forward(ctx, x, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha):
        T = x.shape[0]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(acc)
        tau_f = float(tau)
        vr = 0.0 if v_reset is None else v_reset
        k = 1.0 - 1.0 / tau_f
        # input drive per step, vectorised over time
        drive = (xf + vr) / tau_f if decay_input else xf + vr / tau_f
        h_all = torch.empty_like(xf)
        v = v0.to(acc).clone()
        for t in range(T):
            h = torch.add(drive[t], v, alpha=k, out=h_all[t])
            v = torch.where(h >= v_th, vr, h) if v_reset is not None else h - v_th * (h >= v_th).float()
        spikes = (h_all >= v_th).to(x.dtype)
        ctx.save_for_backward(h_all, xf, v0, *([tau] if isinstance(tau, torch.Tensor) else []))
        ctx.tau_f = tau_f  # read once here (a PLIF tau tensor), not again in backward
        ctx.cfg = (v_th, v_reset, decay_input, detach_reset, surrogate, alpha)
        ctx.x_dtype = x.dtype
        return spikes, v

    @staticmethod
    def backward(ctx, g_spikes, g_v):
        h_all, xf, v0, *tau = ctx.saved_tensors
        v_th, v_reset, decay_input, detach_reset, surrogate, alpha = ctx.cfg
        vr = 0.0 if v_reset is None else v_reset
        tau_f = ctx.tau_f
        k = 1.0 - 1.0 / tau_f
        T = h_all.shape[0]
        s = (h_all >= v_th).to(h_all.dtype)
        sg = surrogate_grad(h_all - v_th, surrogate, alpha)
        if v_reset is not None:
            dvdh = 1.0 - s
            if not detach_reset:
                dvdh = dvdh + (vr - h_all) * sg
        else:
            dvdh = torch.ones_like(h_all) if detach_reset else 1.0 - v_th * sg
        a = g_spikes.to(h_all.dtype) * sg if g_spikes is not None else torch.zeros_like(h_all)
        gh = torch.empty_like(h_all)
        gv = g_v.to(h_all.dtype) if g_v is not None else torch.zeros_like(h_all[0])
        for t in range(T - 1, -1, -1):
            torch.addcmul(a[t], gv, dvdh[t], out=gh[t])
            gv = gh[t] * k
        gx = gh / tau_f if decay_input else gh
        g_tau = None
        if ctx.needs_input_grad[2]:
            v_prev = torch.empty_like(h_all)
            v_prev[0] = v0
            v_prev[1:] = _v_after(h_all[:-1], s[:-1], v_th, v_reset)
            dh_dtau = -(xf - v_prev + vr) if decay_input else (v_prev - vr)
            g_tau = (gh * dh_dtau).sum() / tau_f**2
            g_tau = g_tau.to(tau[0].dtype)
        g_v0 = gv.to(v0.dtype) if ctx.needs_input_grad[1] else None
        return gx.to(ctx.x_dtype), g_v0, g_tau, None, None, None, None, None, None
