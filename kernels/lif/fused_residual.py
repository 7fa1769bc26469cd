"""Triton multi-step LIF fused with the residual add: ``y = res + LIF(x)``, one pass each way.

SpikeGPT's block (Zhu et al. 2023) adds the spikes of its output neurons to the residual
stream: ``x = x + LIF(att(ln1(x)))``. Unfused, on the GPU path, that is a transpose copy (the
neuron runs along tokens), the LIF kernel, a ``fill`` for the resting potential, a ``mean``
for the spike rate and the ``add``, and backward a copy, the LIF kernel and the gradient
accumulation. Here one forward kernel reads ``x`` and ``res`` and writes ``y = res + s`` (the
spikes themselves never reach memory) plus per-program spike counts; one backward kernel
writes ``dx`` (``d res = dy`` needs no kernel).

Neuron (SpikingJelly ``LIFNode``; statement ``naive.py``, gradients ``fused_recurrent.py`` and
``torch_loop.py``), per lane and step, in float32::

    h_t = (x_t + v_reset) / tau + (1 - 1/tau) v_{t-1}   (decay_input; else x_t + v_reset/tau + ...)
    s_t = 1[h_t >= v_th];  v_t = v_reset if s_t else h_t (hard) | h_t - v_th s_t (soft)
    y_t = res_t + s_t

Backward: the LIF adjoint of ``fused_recurrent.py`` with ``g_s = dy``; ``d res = dy``.

Layout: ``x, res, y`` viewed as ``[O, T, I]`` contiguous (time-first tensors: ``O = 1``;
the block's ``[B, L, N]`` with the neuron along L: ``O = B``), so no transpose is needed;
program ``(o, j)`` owns lanes ``[j*BLOCK, (j+1)*BLOCK)`` of outer row ``o`` and walks time with
pointers moving ``I`` elements per step, loading ``CHUNK`` steps ahead. The spike rate is
reduced deterministically: each program writes ``count / numel`` of its lanes to its own slot,
one torch ``sum`` adds them (no atomics, no host sync). ``BLOCK`` is chosen from the lane
count, not autotuned, so the number of slots is known before the launch.

Kernels run compiled (CUDA) or in Triton's interpreter (CPU tensors, tests), whatever
``TRITON_INTERPRET`` was at import (``triton_utils.kernel``); Triton builtins only.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import triton_utils
from .checks import tau_value
from .fused_recurrent import _SURROGATE_ID

__all__ = ["lif_residual_fused"]

_CPU_CHUNK = 4   # steps loaded ahead per chunk in the interpreter (tests monkeypatch it)


# ----------------------------------------------------------------------------------------------
# kernels (plain functions; compiled or interpreted by ``triton_utils.kernel``)
# ----------------------------------------------------------------------------------------------

@triton_utils.device_function
def _lanes(I, TI, BLOCK: tl.constexpr):
    """Program ``(o, j)``: its lanes ``offs`` in the row, their mask, the ``[O * I]`` state offsets,
    the 64-bit offset of step 0 in ``[O, T, I]`` and the program's flat index (its partial-sum slot)."""
    o = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < I
    return offs, m, o * I + offs, o.to(tl.int64) * TI + offs, o * tl.num_programs(1) + tl.program_id(1)


def _lif_res_fwd_kernel(x_ptr, res_ptr, v0_ptr, y_ptr, h_ptr, vT_ptr, cnt_ptr, T, I, TI,
                        inv_tau, decay, v_th, v_reset, inv_count,
                        BLOCK: tl.constexpr, CHUNK: tl.constexpr, HARD: tl.constexpr, DECAY_INPUT: tl.constexpr,
                        STORE_H: tl.constexpr, HAS_V0: tl.constexpr):
    offs, m, soffs, base, slot = _lanes(I, TI, BLOCK)
    if HAS_V0:
        v = tl.load(v0_ptr + soffs, mask=m, other=0.0).to(tl.float32)
    else:  # at rest: v_reset (0 for a soft reset)
        v = tl.full([BLOCK], 0.0, tl.float32) + v_reset
    xp = x_ptr + base
    rp = res_ptr + base
    yp = y_ptr + base
    hp = h_ptr + base
    if DECAY_INPUT:
        c_in = inv_tau
    else:
        c_in = 1.0
    c_0 = v_reset * inv_tau
    cnt = tl.full([BLOCK], 0.0, tl.float32)
    for t0 in range(0, T, CHUNK):
        xs = ()
        rs = ()
        for i in tl.static_range(CHUNK):
            live = m & ((offs * 0 + (t0 + i)) < T)
            xs = xs + (tl.load(xp, mask=live, other=0.0),)
            rs = rs + (tl.load(rp, mask=live, other=0.0),)
            xp += I
            rp += I
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
            s = tl.where(fire, 1.0, 0.0)
            tl.store(yp, (rs[i].to(tl.float32) + s).to(y_ptr.dtype.element_ty), mask=mt)
            yp += I
            cnt += tl.where(mt, s, 0.0)
            if STORE_H:
                tl.store(hp, h, mask=mt)
                hp += I
    tl.store(vT_ptr + soffs, v, mask=m)
    tl.store(cnt_ptr + slot, tl.reduce(cnt, 0, tl.standard._sum_combine) * inv_count)


def _lif_res_bwd_kernel(h_ptr, x_ptr, v0_ptr, gy_ptr, gvT_ptr, gx_ptr, gv0_ptr, gtau_ptr, T, I, TI, LAST,
                        inv_tau, decay, v_th, v_reset, alpha,
                        BLOCK: tl.constexpr, CHUNK: tl.constexpr, HARD: tl.constexpr, DECAY_INPUT: tl.constexpr,
                        DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr, HAS_GY: tl.constexpr,
                        HAS_GV: tl.constexpr, TAU_GRAD: tl.constexpr, HAS_V0: tl.constexpr, NEED_GV0: tl.constexpr):
    offs, m, soffs, base, slot = _lanes(I, TI, BLOCK)
    if HAS_GV:
        gv = tl.load(gvT_ptr + soffs, mask=m, other=0.0).to(tl.float32)
    else:
        gv = tl.full([BLOCK], 0.0, tl.float32)
    gtau = tl.full([BLOCK], 0.0, tl.float32)
    if HAS_V0:
        v0 = tl.load(v0_ptr + soffs, mask=m, other=0.0).to(tl.float32)
    else:
        v0 = tl.full([BLOCK], 0.0, tl.float32) + v_reset
    base = base + LAST  # step T-1, moving back I elements per step
    hp = h_ptr + base
    xp = x_ptr + base
    gyp = gy_ptr + base
    gxp = gx_ptr + base
    h = tl.load(hp, mask=m, other=0.0)  # h_{T-1}
    for c0 in range(0, T, CHUNK):
        t_hi = T - 1 - c0
        hs = ()  # h_{t-1} of each step
        gys = ()
        xs = ()
        for i in tl.static_range(CHUNK):
            t = t_hi - i
            hp -= I
            hs = hs + (tl.load(hp, mask=m & ((offs * 0 + t) > 0), other=0.0),)
            if HAS_GY:
                gys = gys + (tl.load(gyp, mask=m & ((offs * 0 + t) >= 0), other=0.0),)
                gyp -= I
            if TAU_GRAD and DECAY_INPUT:
                xs = xs + (tl.load(xp, mask=m & ((offs * 0 + t) >= 0), other=0.0),)
                xp -= I
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
            if HAS_GY:  # g_s = dy: y = res + s
                gh = gh + gys[i].to(tl.float32) * sg
            gh = tl.where(mt, gh, 0.0)
            if DECAY_INPUT:
                tl.store(gxp, (gh * inv_tau).to(gx_ptr.dtype.element_ty), mask=mt)
            else:
                tl.store(gxp, gh.to(gx_ptr.dtype.element_ty), mask=mt)
            gxp -= I
            if TAU_GRAD:
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
    if NEED_GV0:
        tl.store(gv0_ptr + soffs, gv, mask=m)
    if TAU_GRAD:
        tl.store(gtau_ptr + slot, tl.reduce(gtau, 0, tl.standard._sum_combine))


# ----------------------------------------------------------------------------------------------
# launch
# ----------------------------------------------------------------------------------------------

def _config(O: int, I: int, device: torch.device, block_size: int | None) -> tuple[int, int, int]:
    """``(BLOCK, CHUNK, num_warps)``: fixed from the lane count (the partial-sum slots must be
    known before the launch, so no autotuning); ``block_size`` fixes ``BLOCK``."""
    if device.type == "cpu":
        return block_size or triton_utils.default_block(I), _CPU_CHUNK, 1
    if block_size:
        return block_size, 8, max(1, min(8, block_size // 128))
    # narrow lanes (tokens x channels): small blocks spread them over the SMs
    return (64, 16, 1) if O * I < (1 << 16) else (128, 8, 1)


def _launch(fn, O, I, device, cfg, args, consts):
    block, chunk, warps = cfg
    extra = {} if device.type == "cpu" else {"num_warps": warps}
    triton_utils.kernel(fn, device)[(O, triton.cdiv(I, block))](*args, BLOCK=block, CHUNK=chunk, **consts, **extra)


def lif_residual_forward(x, res, v0, tau, v_th, v_reset, decay_input, block_size, need_grad
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The forward kernel: ``x, res [O, T, I]``, ``v0 [O * I] | None`` -> ``(y [O, T, I] in res.dtype,
    v_T [O * I] fp32, rate 0-dim fp32, h)``; ``h [O, T, I]`` fp32, the pre-spike potentials the
    backward needs, when ``need_grad`` (else None). No autograd (``LIFResidualFunction`` and the
    custom op ``spikelm::lif_residual`` wrap it)."""
    O, T, I = x.shape
    dev = x.device
    tau_f = tau_value(tau)
    hard = v_reset is not None
    cfg = _config(O, I, dev, block_size)
    y = triton_utils.empty((O, T, I), res.dtype, dev)
    v_T = triton_utils.empty((O * I,), torch.float32, dev)
    h = triton_utils.empty((O, T, I), torch.float32, dev) if need_grad else y
    cnt = triton_utils.empty((O * triton.cdiv(I, cfg[0]),), torch.float32, dev)
    _launch(_lif_res_fwd_kernel, O, I, dev, cfg,
            (x, res, v0 if v0 is not None else x, y, h, v_T, cnt, T, I, T * I,
             1.0 / tau_f, 1.0 - 1.0 / tau_f, float(v_th), float(v_reset) if hard else 0.0, 1.0 / (O * T * I)),
            {"HARD": hard, "DECAY_INPUT": bool(decay_input), "STORE_H": need_grad, "HAS_V0": v0 is not None})
    return y, v_T, cnt.sum(), h if need_grad else None


def lif_residual_backward(h, x, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha, block_size,
                          g_y, g_v, need_gx, need_gv0, tau_grad
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The backward kernel on the saved ``h`` (:func:`lif_residual_forward`): ``g_y [O, T, I] | None``,
    ``g_v [O * I] | None`` -> ``(g_x, g_v0, g_tau)``, each None unless asked for (``need_gx``;
    ``need_gv0`` with a ``v0``; ``tau_grad`` with a tensor ``tau``, then shaped and typed like it).
    ``d res = g_y`` needs no kernel and is the caller's."""
    O, T, I = h.shape
    dev = h.device
    tau_f = tau_value(tau)
    hard = v_reset is not None
    tau_grad = tau_grad and isinstance(tau, torch.Tensor)
    need_gv0 = need_gv0 and v0 is not None
    if (g_y is None and g_v is None) or not (need_gx or tau_grad or need_gv0):
        return None, None, None
    cfg = _config(O, I, dev, block_size)
    gy = g_y.contiguous() if g_y is not None else h
    gx = triton_utils.empty((O, T, I), x.dtype, dev)
    gv0 = triton_utils.empty((O * I,), torch.float32, dev) if need_gv0 else gx
    gtau = triton_utils.empty((O * triton.cdiv(I, cfg[0]),), torch.float32, dev) if tau_grad else gx
    _launch(_lif_res_bwd_kernel, O, I, dev, cfg,
            (h, x, v0 if v0 is not None else h, gy, g_v.contiguous() if g_v is not None else h, gx, gv0, gtau,
             T, I, T * I, (T - 1) * I, 1.0 / tau_f, 1.0 - 1.0 / tau_f, float(v_th),
             float(v_reset) if hard else 0.0, float(alpha)),
            {"HARD": hard, "DECAY_INPUT": bool(decay_input), "DETACH_RESET": bool(detach_reset),
             "SURROGATE": _SURROGATE_ID[surrogate], "HAS_GY": g_y is not None, "HAS_GV": g_v is not None,
             "TAU_GRAD": tau_grad, "HAS_V0": v0 is not None, "NEED_GV0": need_gv0})
    g_tau = (gtau.sum() / tau_f**2).to(dtype=tau.dtype, device=tau.device).reshape(tau.shape) if tau_grad else None
    return (gx if need_gx else None), (gv0.to(v0.dtype) if need_gv0 else None), g_tau


class LIFResidualFunction(torch.autograd.Function):
    """``(x, res [O, T, I], v0 [O*I] | None, tau, ...) -> (res + spikes [O, T, I] in res.dtype,
    v_T [O*I] fp32, spike rate 0-dim fp32)`` on the Triton kernels."""

    @staticmethod
    def forward(ctx, x, res, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha, block_size):
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        y, v_T, rate, h = lif_residual_forward(x, res, v0, tau, v_th, v_reset, decay_input, block_size, need_grad)
        if need_grad:
            ctx.save_for_backward(h, x, v0)
        tau_c = tau.detach() if isinstance(tau, torch.Tensor) else tau  # no grad_fn on ctx: no cycle
        ctx.cfg = (tau_c, v_th, v_reset, decay_input, detach_reset, surrogate, alpha, block_size)
        ctx.mark_non_differentiable(rate)
        ctx.set_materialize_grads(False)
        return y, v_T, rate

    @staticmethod
    def backward(ctx, g_y, g_v, _g_rate):
        if g_y is None and g_v is None:
            return (None,) * 11
        g_x = g_v0 = g_tau = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            h, x, v0 = ctx.saved_tensors
            g_x, g_v0, g_tau = lif_residual_backward(h, x, v0, *ctx.cfg, g_y, g_v, ctx.needs_input_grad[0],
                                                     ctx.needs_input_grad[2], ctx.needs_input_grad[3])
        g_res = g_y if ctx.needs_input_grad[1] else None  # d res = dy
        return g_x, g_res, g_v0, g_tau, None, None, None, None, None, None, None


def lif_residual_fused(res: torch.Tensor, x: torch.Tensor, v0: torch.Tensor | None, tau: float | torch.Tensor = 2.0,
                       v_th: float = 1.0, v_reset: float | None = 0.0, decay_input: bool = True,
                       detach_reset: bool = False, surrogate: str = "atan", alpha: float = 2.0, *,
                       block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``res + LIF(x)`` on Triton over ``[O, T, I]`` tensors (module docstring; SpikingJelly
    ``LIFNode``; SpikeGPT's block output, Zhu et al. 2023).

    Args:
        res, x: ``[O, T, I]`` contiguous, float32/float16/bfloat16 (CUDA; CPU in the interpreter:
            fp32/fp16); time is axis 1, ``O * I`` independent neurons.
        v0: ``[O * I]`` initial potential (read as float32), or None for rest (``v_reset``, 0 soft).
        tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha: as
            :func:`spikelm.kernels.lif.lif_multistep` (``tau`` a float, or a one-element tensor
            for PLIF, then differentiable).
        block_size: lanes per program (power of two >= 16); None picks one. A testing knob.
    Returns:
        ``(y [O, T, I] in res.dtype, v_T [O * I] float32, rate)``: ``y = res + spikes``
        (differentiable in ``res``, ``x``, ``v0`` and a tensor ``tau``), the final potential
        (differentiable too) and the spike rate (0-dim float32 mean of the spikes, not
        differentiable).
    Raises:
        ValueError: shapes not ``[O, T, I]``/``[O * I]``, ``T == 0``, non-contiguous input, a
            non-finite ``alpha``, a bad ``block_size``.
    """
    if x.dim() != 3 or x.shape != res.shape or x.shape[1] == 0:
        raise ValueError(f"x and res must both be [O, T, I] with T > 0, got {tuple(x.shape)} and {tuple(res.shape)}")
    if v0 is not None and v0.shape != (x.shape[0] * x.shape[2],):
        raise ValueError(f"v0 must be [O * I] = [{x.shape[0] * x.shape[2]}], got {tuple(v0.shape)}")
    if not (x.is_contiguous() and res.is_contiguous() and (v0 is None or v0.is_contiguous())):
        raise ValueError("x, res and v0 must be contiguous")
    if not math.isfinite(alpha):
        raise ValueError(f"surrogate alpha must be a finite number > 0, got {alpha}")
    triton_utils.check_power_of_two("block_size", block_size)
    if isinstance(tau, torch.Tensor):
        tau = tau.reshape(())
    return LIFResidualFunction.apply(x, res, v0, tau, v_th, v_reset, decay_input, detach_reset, surrogate, alpha,
                                     block_size)
