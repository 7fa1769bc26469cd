"""Triton multi-step LIF / PLIF: one pass over time forward, one pass backward, state in registers.

Formula (SpikingJelly ``LIFNode``; the statement is ``naive.py``, the gradients are the ones
derived in ``torch_loop.py``), per neuron ``n`` and step ``t``, all math in float32::

    h_t = (x_t + v_reset) / tau + (1 - 1/tau) v_{t-1}        (decay_input)
        =  x_t + v_reset / tau  + (1 - 1/tau) v_{t-1}        (otherwise; v_reset = 0 for soft reset)
    s_t = 1[h_t >= v_th]
    v_t = v_reset if s_t else h_t  (hard)      v_t = h_t - v_th s_t  (soft)

Backward (``sg_t`` = surrogate derivative at ``h_t - v_th``, evaluated in the kernel)::

    gh_t      = gs_t sg_t + gv_t dv_t/dh_t,   dv_t/dh_t = (1 - s_t) + (v_reset - h_t) sg_t  (hard)
                                                        = 1 - v_th sg_t                   (soft)
                                              (the sg term dropped when detach_reset)
    gx_t      = gh_t / tau (decay_input) or gh_t;   gv_{t-1} = gh_t (1 - 1/tau)
    g_tau     = sum_{t,n} gh_t dh_t/dtau,  dh/dtau = -(x_t - v_{t-1} + v_reset)/tau^2 (decay_input)
                                                   = (v_{t-1} - v_reset)/tau^2         (otherwise)

Layout: ``x [T, N]`` row-major; program ``p`` owns neurons ``[p*BLOCK, (p+1)*BLOCK)`` and walks
the time axis with a pointer that moves ``N`` elements per step (no per-step launch, no
compile-time limit on ``T``, 64-bit pointer arithmetic). Time is processed in chunks of
``CHUNK`` steps: the loads of a whole chunk are issued before its sequential update, so a
narrow ``N`` (tokens x channels) still keeps many bytes in flight; a runtime mask handles the
last, partial chunk. The forward saves ``h [T, N]`` (fp32) only when a gradient is needed.
PLIF's ``g_tau`` is reduced deterministically: each program writes one partial sum to its own
slot of a buffer that torch then sums (no atomics).

Kernels are compiled with ``triton.jit`` for CUDA tensors and run by Triton's interpreter for
CPU tensors (tests), whatever ``TRITON_INTERPRET`` was when triton was imported
(``triton_utils.kernel``). The kernels therefore use only Triton builtins and this package's
``triton_utils.device_function`` helpers (not ``tl.zeros``/``tl.sum``/``tl.sigmoid``, which are
Triton's own jitted helpers and do not run in that interpreter).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import triton_utils
from .checks import check_lif_inputs, tau_value
from .torch_loop import LIFTorchFunction

__all__ = ["lif_fused_recurrent"]

_SURROGATE_ID = {"atan": 0, "sigmoid": 1}
_TAU_BLOCK_MIN = 64  # smallest BLOCK of any CUDA config: bounds the number of tau partial sums
# (BLOCK, num_warps, CHUNK): small blocks spread a narrow N (tokens x channels) over more SMs
_CUDA_CONFIGS = [
    (64, 1, 16), (128, 1, 8), (256, 2, 8), (512, 4, 8), (1024, 4, 8), (1024, 8, 4), (2048, 8, 4),
]
_CUDA_CHUNK = 8  # steps loaded ahead per chunk when block_size is given on CUDA
_CPU_CHUNK = 4   # same for the interpreter (tests monkeypatch it)


# ----------------------------------------------------------------------------------------------
# kernels (plain functions; compiled or interpreted by ``triton_utils.kernel``)
# ----------------------------------------------------------------------------------------------

def _lif_fwd_kernel(x_ptr, v0_ptr, s_ptr, h_ptr, vT_ptr, N, T, inv_tau, decay, v_th, v_reset,
                    BLOCK: tl.constexpr, CHUNK: tl.constexpr, HARD: tl.constexpr, DECAY_INPUT: tl.constexpr,
                    STORE_H: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    v = tl.load(v0_ptr + offs, mask=m, other=0.0).to(tl.float32)
    xp = x_ptr + offs
    sp = s_ptr + offs
    hp = h_ptr + offs
    if DECAY_INPUT:
        c_in = inv_tau
    else:
        c_in = 1.0
    c_0 = v_reset * inv_tau
    for t0 in range(0, T, CHUNK):
        # issue the loads of CHUNK steps before any compute: CHUNK x more bytes in flight
        xs = ()
        for i in tl.static_range(CHUNK):
            xs = xs + (tl.load(xp, mask=m & ((offs * 0 + (t0 + i)) < T), other=0.0),)
            xp += N
        for i in tl.static_range(CHUNK):
            live = (offs * 0 + (t0 + i)) < T
            mt = m & live
            h = (xs[i].to(tl.float32) * c_in + c_0) + decay * v
            fire = h >= v_th
            if HARD:
                v_new = tl.where(fire, v_reset, h)
            else:
                v_new = h - tl.where(fire, v_th, 0.0)
            v = tl.where(live, v_new, v)
            tl.store(sp, tl.where(fire, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mt)
            sp += N
            if STORE_H:
                tl.store(hp, h, mask=mt)
                hp += N
    tl.store(vT_ptr + offs, v, mask=m)


def _lif_bwd_kernel(h_ptr, x_ptr, v0_ptr, gs_ptr, gvT_ptr, gx_ptr, gv0_ptr, gtau_ptr, N, T, LAST,
                    inv_tau, decay, v_th, v_reset, alpha,
                    BLOCK: tl.constexpr, CHUNK: tl.constexpr, HARD: tl.constexpr, DECAY_INPUT: tl.constexpr,
                    DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr, HAS_GS: tl.constexpr,
                    HAS_GV: tl.constexpr, TAU_GRAD: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    if HAS_GV:
        gv = tl.load(gvT_ptr + offs, mask=m, other=0.0).to(tl.float32)
    else:
        gv = tl.full([BLOCK], 0.0, tl.float32)
    gtau = tl.full([BLOCK], 0.0, tl.float32)
    v0 = tl.load(v0_ptr + offs, mask=m, other=0.0).to(tl.float32)
    # pointers at step T-1, moving backwards by N per step
    hp = h_ptr + LAST + offs
    xp = x_ptr + LAST + offs
    gsp = gs_ptr + LAST + offs
    gxp = gx_ptr + LAST + offs
    h = tl.load(hp, mask=m, other=0.0)  # h_{T-1}
    for c0 in range(0, T, CHUNK):
        t_hi = T - 1 - c0  # steps t_hi, t_hi - 1, ..., t_hi - CHUNK + 1 (those >= 0)
        hs = ()  # h_{t-1} of each step (the next step's h)
        gss = ()
        xs = ()
        for i in tl.static_range(CHUNK):
            t = t_hi - i
            hp -= N
            hs = hs + (tl.load(hp, mask=m & ((offs * 0 + t) > 0), other=0.0),)
            if HAS_GS:
                gss = gss + (tl.load(gsp, mask=m & ((offs * 0 + t) >= 0), other=0.0),)
                gsp -= N
            if TAU_GRAD and DECAY_INPUT:
                xs = xs + (tl.load(xp, mask=m & ((offs * 0 + t) >= 0), other=0.0),)
                xp -= N
        for i in tl.static_range(CHUNK):
            t = t_hi - i
            live = (offs * 0 + t) >= 0
            mt = m & live
            h_prev = hs[i]
            u = h - v_th
            fire = u >= 0.0
            if SURROGATE == 0:  # ATan: alpha / (2 (1 + (pi/2 alpha u)^2))
                z = 1.5707963267948966 * alpha * u
                sg = (0.5 * alpha) / (1.0 + z * z)
            else:  # Sigmoid: alpha sig(alpha u) (1 - sig(alpha u))
                sgm = 1.0 / (1.0 + tl.exp(-alpha * u))
                sg = alpha * sgm * (1.0 - sgm)
            if HARD:
                dvdh = tl.where(fire, 0.0, 1.0)
                if not DETACH_RESET:
                    dvdh = dvdh + (v_reset - h) * sg
            else:
                if DETACH_RESET:
                    dvdh = tl.full([BLOCK], 1.0, tl.float32)
                else:
                    dvdh = 1.0 - v_th * sg
            gh = gv * dvdh
            if HAS_GS:
                gh = gh + gss[i].to(tl.float32) * sg
            gh = tl.where(mt, gh, 0.0)
            if DECAY_INPUT:
                tl.store(gxp, (gh * inv_tau).to(gx_ptr.dtype.element_ty), mask=mt)
            else:
                tl.store(gxp, gh.to(gx_ptr.dtype.element_ty), mask=mt)
            gxp -= N
            if TAU_GRAD:
                # v_{t-1}: the initial potential at t = 0, else h_{t-1} after its reset
                if HARD:
                    vp = tl.where(h_prev >= v_th, v_reset, h_prev)
                else:
                    vp = h_prev - tl.where(h_prev >= v_th, v_th, 0.0)
                vp = tl.where((offs * 0 + t) > 0, vp, v0)
                if DECAY_INPUT:
                    gtau += gh * (vp - xs[i].to(tl.float32) - v_reset)
                else:
                    gtau += gh * (vp - v_reset)
            gv = tl.where(live, gh * decay, gv)
            h = h_prev
    tl.store(gv0_ptr + offs, gv, mask=m)
    if TAU_GRAD:
        tl.store(gtau_ptr + pid, tl.reduce(gtau, 0, tl.standard._sum_combine))


# ----------------------------------------------------------------------------------------------
# compilation / launch
# ----------------------------------------------------------------------------------------------

def _launch(fn, n: int, device: torch.device, block_size: int | None, args, consts):
    """Launch ``fn`` over ``cdiv(n, BLOCK)`` programs (autotuned BLOCK/CHUNK on CUDA unless given)."""
    triton_utils.launch_lanes(fn, device, n, lambda block: (triton.cdiv(n, block),), block_size, args, consts,
                              configs=_CUDA_CONFIGS, key=["N"],
                              chunk=_CUDA_CHUNK if device.type == "cuda" else _CPU_CHUNK)


class LIFFusedFunction(torch.autograd.Function):
    """``(x [T, N], v0 [N], tau, ...) -> (spikes [T, N] in x.dtype, v_T [N] fp32)`` on the Triton kernels."""

    @staticmethod
    def forward(ctx, x, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha, block_size):
        T, N = x.shape
        tau_f = tau_value(tau)
        hard = v_reset is not None
        vr = float(v_reset) if hard else 0.0
        need_grad = any(ctx.needs_input_grad[:3])  # (grad mode is off inside forward)
        spikes = triton_utils.empty((T, N), x.dtype, x.device)
        v_T = triton_utils.empty((N,), torch.float32, x.device)
        h = triton_utils.empty((T, N), torch.float32, x.device) if need_grad else spikes
        _launch(_lif_fwd_kernel, N, x.device, block_size,
                (x, v0, spikes, h, v_T, N, T, 1.0 / tau_f, 1.0 - 1.0 / tau_f, float(v_th), vr),
                dict(HARD=hard, DECAY_INPUT=bool(decay_input), STORE_H=need_grad))
        if need_grad:
            ctx.save_for_backward(h, x, v0)
        ctx.cfg = (tau_f, float(v_th), vr, hard, bool(decay_input), bool(detach_reset), surrogate, float(alpha),
                   block_size)
        ctx.tau_meta = (tau.dtype, tau.device, tau.shape) if isinstance(tau, torch.Tensor) else None
        return spikes, v_T

    @staticmethod
    def backward(ctx, g_spikes, g_v):
        h, x, v0 = ctx.saved_tensors
        tau_f, v_th, vr, hard, decay_input, detach_reset, surrogate, alpha, block_size = ctx.cfg
        T, N = h.shape
        dev = h.device
        tau_grad = ctx.tau_meta is not None and ctx.needs_input_grad[2]
        gs = g_spikes.contiguous() if g_spikes is not None else h
        gvT = g_v.contiguous() if g_v is not None else h
        gx = triton_utils.empty((T, N), x.dtype, dev)
        gv0 = triton_utils.empty((N,), torch.float32, dev)
        n_part = triton.cdiv(N, min(_TAU_BLOCK_MIN, block_size or _TAU_BLOCK_MIN))
        gtau = torch.zeros(n_part if tau_grad else 1, dtype=torch.float32, device=dev)
        _launch(_lif_bwd_kernel, N, dev, block_size,
                (h, x, v0, gs, gvT, gx, gv0, gtau, N, T, (T - 1) * N,
                 1.0 / tau_f, 1.0 - 1.0 / tau_f, v_th, vr, alpha),
                dict(HARD=hard, DECAY_INPUT=decay_input, DETACH_RESET=detach_reset,
                     SURROGATE=_SURROGATE_ID[surrogate], HAS_GS=g_spikes is not None, HAS_GV=g_v is not None,
                     TAU_GRAD=tau_grad))
        g_tau = None
        if tau_grad:
            dtype, device, shape = ctx.tau_meta
            g_tau = (gtau.sum() / tau_f**2).to(dtype=dtype, device=device).reshape(shape)
        g_v0 = gv0.to(v0.dtype) if ctx.needs_input_grad[1] else None
        g_x = gx if ctx.needs_input_grad[0] else None
        return g_x, g_v0, g_tau, None, None, None, None, None, None, None


def lif_fused_recurrent(x: torch.Tensor, v0: torch.Tensor, tau: float | torch.Tensor = 2.0, v_th: float = 1.0,
                        v_reset: float | None = 0.0, decay_input: bool = True, detach_reset: bool = False,
                        surrogate: str = "atan", alpha: float = 2.0, *, block_size: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-step LIF / PLIF on Triton (formula and gradients: module docstring; SpikingJelly ``LIFNode``).

    Args:
        x: ``[T, N]`` contiguous input current, float32/float16/bfloat16, on CUDA (compiled
            kernel) or CPU (Triton interpreter; float32/float16 only, for tests). float64 is
            routed to the torch path ``torch_loop.LIFTorchFunction`` (gradcheck).
        v0: ``[N]`` contiguous initial membrane potential, any float dtype (read as float32).
        tau: time constant > 0, a float or a one-element tensor (PLIF; then differentiable).
        v_th: threshold > 0. v_reset: hard-reset potential, or None for a soft reset.
        decay_input, detach_reset, surrogate (``"atan"``/``"sigmoid"``), alpha: as in
            :func:`spikelm.kernels.lif.lif_multistep`.
        block_size: neurons per program (power of two >= 16); None autotunes on CUDA and
            picks one wide program on CPU. A tuning/testing knob.
    Returns:
        ``(spikes [T, N] in x.dtype, v_T [N] float32)``, differentiable in ``x``, ``v0`` and a
        tensor ``tau`` (the returned ``v_T`` also carries gradient into ``x``, ``v0``, ``tau``).
    Raises:
        TypeError: ``x`` or ``v0`` missing or not a float32/float16/bfloat16/float64 tensor.
        ValueError: wrong ranks/shapes, non-contiguous input, different devices, ``T == 0``,
            ``tau <= 0``, ``v_th <= 0``, unknown surrogate, ``alpha <= 0`` or not finite, bad
            ``block_size`` (``checks.check_lif_inputs`` plus the layout checks here).
    """
    if v0 is None:
        raise TypeError("v0 must be a tensor: the [N] initial membrane potential")
    check_lif_inputs(x, v0, tau, v_th, surrogate, alpha)
    if x.dim() != 2:
        raise ValueError(f"x must be [T, N] with T > 0, got {tuple(x.shape)}")
    if not x.is_contiguous() or not v0.is_contiguous():
        raise ValueError("x and v0 must be contiguous")
    if not math.isfinite(alpha):
        raise ValueError(f"surrogate alpha must be a finite number > 0, got {alpha}")
    triton_utils.check_power_of_two("block_size", block_size)
    if x.dtype == torch.float64 or x.shape[1] == 0:  # fp64 (gradcheck) and N = 0: the torch path
        return LIFTorchFunction.apply(x, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha)
    return LIFFusedFunction.apply(x, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha, block_size)
