"""Triton RWKV-4 WKV: fused recurrent forward and backward, numerically stable, any length.

Formula (Peng et al. 2023, RWKV-4; SpikeGPT ``src/model.py``; statement in ``naive.py``),
per batch row ``b`` and channel ``d``, with decay ``w > 0`` and bonus ``u``::

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
            / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})

The state entering token ``t`` is ``(aa_t, bb_t, pp_t)`` with unnormalised sums
``A_t = e^{pp_t} aa_t``, ``B_t = e^{pp_t} bb_t``; ``pp`` is the running maximum exponent, so
every ``exp`` evaluated has an argument <= 0 (no overflow for any ``L``). The forward is the
loop of ``naive.py``; the backward is the adjoint recursion of ``torch_loop.py`` (its
docstring derives it), run in reverse time with its own running maximum ``o``::

    q_t = max(pp_t, u + k_t),  d_t = e^{pp_t - q_t} bb_t + e^{u + k_t - q_t},  c_t = gy_t / d_t
    gv_t = c_t e^{u+k_t-q_t} + e^{k_t + o_{t+1}} ga_{t+1}
    gk_t = c_t e^{u+k_t-q_t} (v_t - y_t) + e^{k_t + o_{t+1}} (v_t ga_{t+1} + gb_{t+1})
    gu   = sum_t c_t e^{u+k_t-q_t} (v_t - y_t)
    gw   = -sum_t e^{pp_t + o_{t+1} - w} (aa_t ga_{t+1} + bb_t gb_{t+1})
    (o, ga, gb)_t = running-max combination of e^{-w} e^{o_{t+1}} (ga, gb)_{t+1} and e^{-q_t} (c_t, -c_t y_t)

and the gradient of the initial state ``(aa_0, bb_0, pp_0)`` from ``(o, ga, gb)_0``.

Layout: ``k, v, y [B, L, D]`` contiguous; program ``(b, j)`` owns channels
``[j*BLOCK, (j+1)*BLOCK)`` of row ``b`` and walks the sequence with pointers moving ``D``
elements per step (no per-step launch, no compile-time maximum length, 64-bit offsets), in
chunks of ``CHUNK`` tokens whose loads are all issued before the chunk's sequential update
(more bytes in flight for the narrow ``B * D`` parallelism); a mask handles the last chunk.
State and all accumulation are float32. The forward saves the state entering every token
(``aa, bb, pp`` as three fp32 ``[B, L, D]`` tensors, memory linear in ``L``) only when a
gradient is needed. ``gw``/``gu`` are reduced deterministically: per ``(b, d)`` partial sums
written to a ``[B, D]`` buffer, then summed over ``B`` by torch (no atomics; the gated variant
writes both to one ``[2, B, D]`` buffer and reduces them with one ``sum``).

Gated variant (``wkv4_gated_fused_recurrent``; SpikeGPT's time-mix output ``sigmoid(r) * wkv``):
the same kernels with ``GATED`` set. The forward multiplies ``wkv_t`` by ``sigmoid(r_t)`` before
its store (the gate costs no launch and ``wkv`` never reaches memory); the backward recomputes
``wkv_t`` from the saved state (it does so anyway for ``gk``), so with ``g`` the output gradient
``d wkv_t = g_t sigmoid(r_t)`` and ``dr_t = g_t wkv_t sigmoid(r_t) (1 - sigmoid(r_t))``. Without
an initial state (``HAS_STATE`` off) the kernel starts from the empty state itself (no
``wkv4_init_state`` buffers).

Kernels are compiled with ``triton.jit`` for CUDA tensors and run by Triton's interpreter
for CPU tensors (tests), whatever ``TRITON_INTERPRET`` was when triton was imported
(``triton_utils.kernel``); they use Triton builtins and ``triton_utils.device_function``
helpers only (not Triton's own jitted helpers such as ``tl.zeros``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import triton_utils
from .checks import check_wkv4_inputs
from .naive import wkv4_init_state
from .torch_loop import WKV4TorchFunction

__all__ = ["wkv4_fused_recurrent", "wkv4_gated_fused_recurrent"]

# (BLOCK, num_warps, CHUNK); the parallelism is only B * D lanes, so blocks stay small
_CUDA_CONFIGS = [(32, 1, 8), (64, 1, 8), (64, 2, 8), (128, 2, 4), (128, 4, 8), (256, 4, 4)]
_CUDA_CHUNK = 8  # tokens loaded ahead per chunk when block_size is given on CUDA
_CPU_CHUNK = 4   # same for the interpreter (tests monkeypatch it)

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# kernels (plain functions; compiled or interpreted by ``triton_utils.kernel``)
# ----------------------------------------------------------------------------------------------

@triton_utils.device_function
def _channels(w_ptr, u_ptr, D, LD, BLOCK: tl.constexpr):
    """Program ``(b, j)``: its channels ``offs``, their mask, ``w``/``u`` (fp32), the ``[B, D]``
    state offsets and the 64-bit offset of token 0 in the ``[B, L, D]`` tensors."""
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < D
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=m, other=0.0).to(tl.float32)
    return offs, m, w, u, b * D + offs, b.to(tl.int64) * LD + offs


@triton_utils.device_function
def _output(aa, bb, pp, u, kt, vt):
    """``wkv_t`` from the state ``(aa, bb, pp)`` entering token t; also ``q_t``, ``e^{u+k_t-q_t}``, ``d_t``."""
    uk = u + kt
    q = tl.maximum(pp, uk)
    e1 = tl.exp(pp - q)
    e2 = tl.exp(uk - q)
    d = e1 * bb + e2
    return (e1 * aa + e2 * vt) / d, q, e2, d


@triton_utils.device_function
def _load_state(aa_ptr, bb_ptr, pp_ptr, off, m):
    """A state triple ``(aa, bb, pp)`` as float32 from three tensors at the offsets ``off`` (lanes ``m``)."""
    aa = tl.load(aa_ptr + off, mask=m, other=0.0).to(tl.float32)
    bb = tl.load(bb_ptr + off, mask=m, other=0.0).to(tl.float32)
    return aa, bb, tl.load(pp_ptr + off, mask=m, other=0.0).to(tl.float32)


@triton_utils.device_function
def _offset3(a_ptr, b_ptr, c_ptr, off):
    """The three pointers moved by ``off`` elements (the saved ``aa, bb, pp`` of one token)."""
    return a_ptr + off, b_ptr + off, c_ptr + off


@triton_utils.device_function
def _store_state(aa_ptr, bb_ptr, pp_ptr, off, aa, bb, pp, m):
    """Store a triple ``(aa, bb, pp)`` (a state or its gradient) into three tensors at ``off``."""
    tl.store(aa_ptr + off, aa, mask=m)
    tl.store(bb_ptr + off, bb, mask=m)
    tl.store(pp_ptr + off, pp, mask=m)


@triton_utils.device_function
def _prefetch(p, m, offs, t, L, D, CHUNK: tl.constexpr, REVERSE: tl.constexpr):
    """Issue the loads of ``CHUNK`` tokens ``t, t + 1, ...`` (``t, t - 1, ...`` when ``REVERSE``) through
    the pointer ``p`` (token ``t`` of this program's channels), masked to the lanes ``m`` and the
    tokens in ``[0, L)``; returns the loads (stored dtype) and ``p`` moved past them."""
    xs = ()
    for i in tl.static_range(CHUNK):
        if REVERSE:
            xs = xs + (tl.load(p, mask=m & ((offs * 0 + (t - i)) >= 0), other=0.0),)
            p -= D
        else:
            xs = xs + (tl.load(p, mask=m & ((offs * 0 + (t + i)) < L), other=0.0),)
            p += D
    return xs, p


@triton_utils.device_function
def _wkv4_fwd_body(w_ptr, u_ptr, k_ptr, v_ptr, r_ptr, aa_ptr, bb_ptr, pp_ptr, y_ptr,
                   sa_ptr, sb_ptr, sp_ptr, oa_ptr, ob_ptr, op_ptr, B, L, D, LD,
                   BLOCK: tl.constexpr, CHUNK: tl.constexpr, SAVE: tl.constexpr, GATED: tl.constexpr,
                   HAS_STATE: tl.constexpr):
    """The forward of both kernels below: ``GATED`` multiplies the output by ``sigmoid(r)``;
    without ``HAS_STATE`` the recurrence starts from the empty state (no state read)."""
    offs, m, w, u, soffs, base = _channels(w_ptr, u_ptr, D, LD, BLOCK)
    if HAS_STATE:
        aa, bb, pp = _load_state(aa_ptr, bb_ptr, pp_ptr, soffs, m)
    else:  # the empty state (wkv4_init_state) without reading one
        aa = tl.full([BLOCK], 0.0, tl.float32)
        bb = tl.full([BLOCK], 0.0, tl.float32)
        pp = tl.full([BLOCK], -1e38, tl.float32)
    kp = k_ptr + base
    vp = v_ptr + base
    rp = r_ptr + base
    yp = y_ptr + base
    sap, sbp, spp = _offset3(sa_ptr, sb_ptr, sp_ptr, base)  # the saved state entering each token
    for t0 in range(0, L, CHUNK):
        # issue the loads of CHUNK tokens before the sequential update
        ks, kp = _prefetch(kp, m, offs, t0, L, D, CHUNK, False)
        vs, vp = _prefetch(vp, m, offs, t0, L, D, CHUNK, False)
        if GATED:
            rs, rp = _prefetch(rp, m, offs, t0, L, D, CHUNK, False)
        for i in tl.static_range(CHUNK):
            live = (offs * 0 + (t0 + i)) < L
            mt = m & live
            kt = ks[i].to(tl.float32)
            vt = vs[i].to(tl.float32)
            if SAVE:  # the state entering this token
                _store_state(sap, sbp, spp, 0, aa, bb, pp, mt)
                sap, sbp, spp = _offset3(sap, sbp, spp, D)
            y, _, _, _ = _output(aa, bb, pp, u, kt, vt)
            if GATED:  # the receptance gate in the epilogue: sigmoid(r_t) * wkv_t
                y = y / (1.0 + tl.exp(-rs[i].to(tl.float32)))
            tl.store(yp, y.to(y_ptr.dtype.element_ty), mask=mt)
            yp += D
            ww = pp - w
            p = tl.maximum(ww, kt)
            e1 = tl.exp(ww - p)
            e2 = tl.exp(kt - p)
            aa = tl.where(live, e1 * aa + e2 * vt, aa)
            bb = tl.where(live, e1 * bb + e2, bb)
            pp = tl.where(live, p, pp)
    _store_state(oa_ptr, ob_ptr, op_ptr, soffs, aa, bb, pp, m)


@triton_utils.device_function
def _wkv4_bwd_body(w_ptr, u_ptr, k_ptr, v_ptr, r_ptr, gy_ptr, sa_ptr, sb_ptr, sp_ptr,
                   gk_ptr, gv_ptr, gr_ptr, gw_ptr, gu_ptr, gaa_ptr, gbb_ptr, gpp_ptr, B, L, D, LD, LAST,
                   BLOCK: tl.constexpr, CHUNK: tl.constexpr, GATED: tl.constexpr, STATE_GRAD: tl.constexpr):
    """The backward of both kernels below: ``GATED`` takes ``gy`` as the gradient of
    ``sigmoid(r) * wkv`` and writes ``gr``; ``STATE_GRAD`` writes the initial state's gradient."""
    offs, m, w, u, soffs, base = _channels(w_ptr, u_ptr, D, LD, BLOCK)
    # state entering token 0 = the initial state (saved by the forward at t = 0)
    aa0, bb0, pp0 = _load_state(sa_ptr, sb_ptr, sp_ptr, base, m)
    base = base + LAST  # pointers at token L-1, moving back D elements per token
    kp = k_ptr + base
    vp = v_ptr + base
    rp = r_ptr + base
    gyp = gy_ptr + base
    sap, sbp, spp = _offset3(sa_ptr, sb_ptr, sp_ptr, base)
    gkp = gk_ptr + base
    gvp = gv_ptr + base
    grp = gr_ptr + base
    o = tl.full([BLOCK], -1e38, tl.float32)  # EMPTY_PP (a literal: jitted code reads no globals)
    ga = tl.full([BLOCK], 0.0, tl.float32)
    gb = tl.full([BLOCK], 0.0, tl.float32)
    gw = tl.full([BLOCK], 0.0, tl.float32)
    gu = tl.full([BLOCK], 0.0, tl.float32)
    for c0 in range(0, L, CHUNK):
        t_hi = L - 1 - c0  # tokens t_hi, t_hi - 1, ..., t_hi - CHUNK + 1 (those >= 0)
        ks, kp = _prefetch(kp, m, offs, t_hi, L, D, CHUNK, True)
        vs, vp = _prefetch(vp, m, offs, t_hi, L, D, CHUNK, True)
        gys, gyp = _prefetch(gyp, m, offs, t_hi, L, D, CHUNK, True)
        if GATED:
            rs, rp = _prefetch(rp, m, offs, t_hi, L, D, CHUNK, True)
        sas, sap = _prefetch(sap, m, offs, t_hi, L, D, CHUNK, True)
        sbs, sbp = _prefetch(sbp, m, offs, t_hi, L, D, CHUNK, True)
        sps, spp = _prefetch(spp, m, offs, t_hi, L, D, CHUNK, True)
        for i in tl.static_range(CHUNK):
            live = (offs * 0 + (t_hi - i)) >= 0
            mt = m & live
            kt = ks[i].to(tl.float32)
            vt = vs[i].to(tl.float32)
            gyt = gys[i].to(tl.float32)
            a_t = sas[i]
            b_t = sbs[i]
            p_t = sps[i]
            y, q, e2, d = _output(a_t, b_t, p_t, u, kt, vt)
            if GATED:  # out = sig(r) wkv: d wkv = g sig(r), d r = g wkv sig(r) (1 - sig(r))
                sig = 1.0 / (1.0 + tl.exp(-rs[i].to(tl.float32)))
                tl.store(grp, (gyt * y * sig * (1.0 - sig)).to(gr_ptr.dtype.element_ty), mask=mt)
                grp -= D
                gyt = gyt * sig
            c = tl.where(mt, gyt / d, 0.0)
            direct = c * e2
            ek = tl.exp(kt + o)
            gkd = direct * (vt - y)
            tl.store(gvp, (direct + ek * ga).to(gv_ptr.dtype.element_ty), mask=mt)
            tl.store(gkp, (gkd + ek * (vt * ga + gb)).to(gk_ptr.dtype.element_ty), mask=mt)
            gkp -= D
            gvp -= D
            gu += gkd
            gw += tl.where(mt, tl.exp(p_t + o - w) * (a_t * ga + b_t * gb), 0.0)
            # adjoint of the state entering token t
            ow = o - w
            no = tl.maximum(ow, -q)
            f1 = tl.exp(ow - no)
            f2 = tl.exp(-q - no)
            ga = tl.where(live, f1 * ga + f2 * c, ga)
            gb = tl.where(live, f1 * gb - f2 * c * y, gb)
            o = tl.where(live, no, o)
    if STATE_GRAD:
        s0 = tl.exp(pp0 + o)
        _store_state(gaa_ptr, gbb_ptr, gpp_ptr, soffs, s0 * ga, s0 * gb, s0 * (aa0 * ga + bb0 * gb), m)
    tl.store(gw_ptr + soffs, -gw, mask=m)
    tl.store(gu_ptr + soffs, gu, mask=m)


def _wkv4_fwd_kernel(w_ptr, u_ptr, k_ptr, v_ptr, aa_ptr, bb_ptr, pp_ptr, y_ptr,
                     sa_ptr, sb_ptr, sp_ptr, oa_ptr, ob_ptr, op_ptr, B, L, D, LD,
                     BLOCK: tl.constexpr, CHUNK: tl.constexpr, SAVE: tl.constexpr):
    _wkv4_fwd_body(w_ptr, u_ptr, k_ptr, v_ptr, v_ptr, aa_ptr, bb_ptr, pp_ptr, y_ptr, sa_ptr, sb_ptr, sp_ptr,
                   oa_ptr, ob_ptr, op_ptr, B, L, D, LD, BLOCK, CHUNK, SAVE, False, True)


def _wkv4_bwd_kernel(w_ptr, u_ptr, k_ptr, v_ptr, gy_ptr, sa_ptr, sb_ptr, sp_ptr,
                     gk_ptr, gv_ptr, gw_ptr, gu_ptr, gaa_ptr, gbb_ptr, gpp_ptr, B, L, D, LD, LAST,
                     BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    _wkv4_bwd_body(w_ptr, u_ptr, k_ptr, v_ptr, v_ptr, gy_ptr, sa_ptr, sb_ptr, sp_ptr, gk_ptr, gv_ptr, gk_ptr,
                   gw_ptr, gu_ptr, gaa_ptr, gbb_ptr, gpp_ptr, B, L, D, LD, LAST, BLOCK, CHUNK, False, True)


def _wkv4_gated_fwd_kernel(w_ptr, u_ptr, k_ptr, v_ptr, r_ptr, aa_ptr, bb_ptr, pp_ptr, y_ptr,
                           sa_ptr, sb_ptr, sp_ptr, oa_ptr, ob_ptr, op_ptr, B, L, D, LD,
                           BLOCK: tl.constexpr, CHUNK: tl.constexpr, SAVE: tl.constexpr, HAS_STATE: tl.constexpr):
    _wkv4_fwd_body(w_ptr, u_ptr, k_ptr, v_ptr, r_ptr, aa_ptr, bb_ptr, pp_ptr, y_ptr, sa_ptr, sb_ptr, sp_ptr,
                   oa_ptr, ob_ptr, op_ptr, B, L, D, LD, BLOCK, CHUNK, SAVE, True, HAS_STATE)


def _wkv4_gated_bwd_kernel(w_ptr, u_ptr, k_ptr, v_ptr, r_ptr, gy_ptr, sa_ptr, sb_ptr, sp_ptr,
                           gk_ptr, gv_ptr, gr_ptr, gw_ptr, gu_ptr, gaa_ptr, gbb_ptr, gpp_ptr, B, L, D, LD, LAST,
                           BLOCK: tl.constexpr, CHUNK: tl.constexpr, STATE_GRAD: tl.constexpr):
    _wkv4_bwd_body(w_ptr, u_ptr, k_ptr, v_ptr, r_ptr, gy_ptr, sa_ptr, sb_ptr, sp_ptr, gk_ptr, gv_ptr, gr_ptr,
                   gw_ptr, gu_ptr, gaa_ptr, gbb_ptr, gpp_ptr, B, L, D, LD, LAST, BLOCK, CHUNK, True, STATE_GRAD)


# ----------------------------------------------------------------------------------------------
# compilation / launch
# ----------------------------------------------------------------------------------------------

def _launch(fn, B: int, D: int, device: torch.device, block_size: int | None, args, consts):
    """Launch ``fn`` over ``(B, cdiv(D, BLOCK))`` programs; autotuned on the parallelism ``(B, D)``
    (not on ``L``: a new prompt length must not re-tune) unless ``block_size`` is given."""
    triton_utils.launch_lanes(fn, device, D, lambda block: (B, triton.cdiv(D, block)), block_size, args, consts,
                              configs=_CUDA_CONFIGS, key=["B", "D"],
                              chunk=_CUDA_CHUNK if device.type == "cuda" else _CPU_CHUNK)


def _forward_buffers(B: int, L: int, D: int, dtype: torch.dtype, dev: torch.device, need_grad: bool):
    """The forward kernels' outputs: ``y [B, L, D]`` in ``dtype``, the final state ``oa, ob, op [B, D]``
    fp32 and, when ``need_grad``, the per-token states ``sa, sb, sp [B, L, D]`` fp32 for the
    backward (else ``oa`` three times: never touched with ``SAVE=False``)."""
    y = triton_utils.empty((B, L, D), dtype, dev)
    oa, ob, op = (triton_utils.empty((B, D), torch.float32, dev) for _ in range(3))
    if need_grad:
        return (y, oa, ob, op, *(triton_utils.empty((B, L, D), torch.float32, dev) for _ in range(3)))
    return y, oa, ob, op, oa, oa, oa


class WKV4FusedFunction(torch.autograd.Function):
    """``(w, u [D], k, v [B, L, D], aa, bb, pp [B, D]) -> (y [B, L, D] in v.dtype, aa, bb, pp fp32)``."""

    @staticmethod
    def forward(ctx, w, u, k, v, aa, bb, pp, block_size):
        B, L, D = k.shape
        dev = k.device
        need_grad = any(ctx.needs_input_grad[:7])
        y, oa, ob, op, sa, sb, sp = _forward_buffers(B, L, D, v.dtype, dev, need_grad)
        _launch(_wkv4_fwd_kernel, B, D, dev, block_size,
                (w, u, k, v, aa, bb, pp, y, sa, sb, sp, oa, ob, op, B, L, D, L * D), dict(SAVE=need_grad))
        if need_grad:
            ctx.save_for_backward(w, u, k, v, sa, sb, sp)
        ctx.dtypes = (w.dtype, u.dtype, aa.dtype, bb.dtype, pp.dtype)
        ctx.block_size = block_size
        ctx.mark_non_differentiable(oa, ob, op)
        return y, oa, ob, op

    @staticmethod
    def backward(ctx, gy, _ga, _gb, _gp):
        w, u, k, v, sa, sb, sp = ctx.saved_tensors
        B, L, D = k.shape
        dev = k.device
        gy = gy.contiguous()
        gk = triton_utils.empty((B, L, D), k.dtype, dev)
        gv = triton_utils.empty((B, L, D), v.dtype, dev)
        gw, gu, gaa, gbb, gpp = (triton_utils.empty((B, D), torch.float32, dev) for _ in range(5))
        _launch(_wkv4_bwd_kernel, B, D, dev, ctx.block_size,
                (w, u, k, v, gy, sa, sb, sp, gk, gv, gw, gu, gaa, gbb, gpp, B, L, D, L * D, (L - 1) * D), {})
        dw, du, daa, dbb, dpp = ctx.dtypes
        return (gw.sum(0).to(dw), gu.sum(0).to(du), gk, gv, gaa.to(daa), gbb.to(dbb), gpp.to(dpp), None)


def wkv4_fused_recurrent(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: State | None = None,
    *,
    block_size: int | None = None,
) -> tuple[torch.Tensor, State]:
    """RWKV-4 WKV on Triton (formula: module docstring; RWKV-4 / SpikeGPT).

    Args:
        w: ``[D]`` decay rate > 0 (SpikeGPT ``exp(time_decay)``), any float dtype.
        u: ``[D]`` bonus for the current token (``time_first``), any float dtype.
        k, v: ``[B, L, D]`` keys and values of one dtype: float32/float16/bfloat16 on CUDA
            (compiled kernel) or CPU (Triton interpreter, for tests). float64 is routed to
            the torch path ``torch_loop.WKV4TorchFunction`` (gradcheck). Non-contiguous
            inputs are copied to contiguous ones.
        state: ``(aa, bb, pp)``, each ``[B, D]`` (read as float32), from ``wkv4_init_state``
            or a previous call; None for the empty state.
        block_size: channels per program (power of two >= 16); None autotunes on CUDA and
            picks one program per batch row on CPU. A tuning/testing knob.
    Returns:
        ``(y [B, L, D] in v.dtype, (aa, bb, pp) each [B, D] float32)``. ``y`` is differentiable
        in ``w, u, k, v`` and the initial state; the returned state is not differentiable.
    Raises:
        TypeError: non-float inputs, ``k``/``v`` of different dtypes, non-float32/64 state
            (``checks.check_wkv4_inputs``).
        ValueError: shape mismatch, ``L == 0``, tensors on different devices, bad ``block_size``.
    """
    check_wkv4_inputs(w, u, k, v, state)
    B, L, D = k.shape
    if state is None:
        state = wkv4_init_state(B, D, k.device)
    triton_utils.check_power_of_two("block_size", block_size)
    if v.dtype == torch.float64 or B * D == 0:  # fp64 (gradcheck) and empty batches: the torch path
        y, aa, bb, pp = WKV4TorchFunction.apply(w, u, k, v, *state)
        return y, (aa, bb, pp)
    w, u, k, v = (t.contiguous() for t in (w, u, k, v))
    aa, bb, pp = (s.contiguous() for s in state)
    y, aa, bb, pp = WKV4FusedFunction.apply(w, u, k, v, aa, bb, pp, block_size)
    return y, (aa, bb, pp)


def wkv4_gated_forward(w, u, k, v, r, aa, bb, pp, block_size, need_grad):
    """The gated forward kernel on contiguous inputs (shapes: :class:`WKV4GatedFusedFunction`) ->
    ``(out, oa, ob, op, saved)``: the gated output, the final state (fp32) and, when
    ``need_grad``, ``saved = (sa, sb, sp)``, the fp32 ``[B, L, D]`` state entering each token that
    :func:`wkv4_gated_backward` reads (else ``()``). No autograd."""
    B, L, D = k.shape
    dev = k.device
    has_state = aa is not None
    out, oa, ob, op, sa, sb, sp = _forward_buffers(B, L, D, r.dtype, dev, need_grad)
    st = (aa, bb, pp) if has_state else (oa, oa, oa)  # not read without a state (HAS_STATE=False)
    _launch(_wkv4_gated_fwd_kernel, B, D, dev, block_size,
            (w, u, k, v, r, *st, out, sa, sb, sp, oa, ob, op, B, L, D, L * D),
            {"SAVE": need_grad, "HAS_STATE": has_state})
    return out, oa, ob, op, ((sa, sb, sp) if need_grad else ())


def wkv4_gated_backward(w, u, k, v, r, saved, gout, state_dtypes, block_size):
    """The gated backward kernel on :func:`wkv4_gated_forward`'s ``saved``: ``gout [B, L, D]`` ->
    ``(gw, gu, gk, gv, gr, gaa, gbb, gpp)``; ``gw, gu`` in ``w``'s and ``u``'s dtypes, the state
    gradients in ``state_dtypes`` (three dtypes; None: no state gradient, the three are None).
    ``gw``/``gu`` are rows of one reduction (views of one tensor where the dtype is float32)."""
    sa, sb, sp = saved
    B, L, D = k.shape
    dev = k.device
    state_grad = state_dtypes is not None
    gout = gout.contiguous()
    gk = triton_utils.empty((B, L, D), k.dtype, dev)
    gv = triton_utils.empty((B, L, D), v.dtype, dev)
    gr = triton_utils.empty((B, L, D), r.dtype, dev)
    gwu = triton_utils.empty((2, B, D), torch.float32, dev)  # gw, gu partial sums: one reduction
    gst = [triton_utils.empty((B, D), torch.float32, dev) for _ in range(3)] if state_grad else [gwu[0]] * 3
    _launch(_wkv4_gated_bwd_kernel, B, D, dev, block_size,
            (w, u, k, v, r, gout, sa, sb, sp, gk, gv, gr, gwu[0], gwu[1], *gst, B, L, D, L * D, (L - 1) * D),
            {"STATE_GRAD": state_grad})
    gw, gu = gwu.sum(1)
    gstate = [g.to(dt) for g, dt in zip(gst, state_dtypes)] if state_grad else [None] * 3
    return (gw.to(w.dtype), gu.to(u.dtype), gk, gv, gr, *gstate)


class WKV4GatedFusedFunction(torch.autograd.Function):
    """``(w, u [D], k, v, r [B, L, D], aa, bb, pp [B, D] | None) -> (sigmoid(r) * wkv [B, L, D] in
    r.dtype, aa, bb, pp fp32)``: the WKV kernels with the receptance gate in their epilogue."""

    @staticmethod
    def forward(ctx, w, u, k, v, r, aa, bb, pp, block_size):
        need_grad = any(ctx.needs_input_grad[:8])
        out, oa, ob, op, saved = wkv4_gated_forward(w, u, k, v, r, aa, bb, pp, block_size, need_grad)
        if need_grad:
            ctx.save_for_backward(w, u, k, v, r, *saved)
        ctx.state_dtypes = (aa.dtype, bb.dtype, pp.dtype) if aa is not None else None
        ctx.block_size = block_size
        ctx.mark_non_differentiable(oa, ob, op)
        return out, oa, ob, op

    @staticmethod
    def backward(ctx, gout, _ga, _gb, _gp):
        w, u, k, v, r, *saved = ctx.saved_tensors
        dtypes = ctx.state_dtypes if any(ctx.needs_input_grad[5:8]) else None
        return (*wkv4_gated_backward(w, u, k, v, r, saved, gout, dtypes, ctx.block_size), None)


def wkv4_gated_fused_recurrent(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                               state: State | None = None, *, block_size: int | None = None
                               ) -> tuple[torch.Tensor, State]:
    """Gated RWKV-4 WKV on Triton: ``sigmoid(r) * wkv(w, u, k, v)`` with the gate in the kernel's
    epilogue (SpikeGPT's time-mix, Zhu et al. 2023; RWKV-4, Peng et al. 2023; formula: module
    docstring and ``kernels/wkv4/gated.py``).

    Args:
        w, u: ``[D]`` decay (> 0) and bonus, any float dtype.
        k, v, r: ``[B, L, D]`` keys, values and receptance; ``k``/``v`` of one dtype,
            float32/float16/bfloat16 on CUDA or CPU (interpreter; fp32/fp16). float64 goes to
            the torch path (gradcheck). Non-contiguous inputs are copied.
        state: ``(aa, bb, pp)`` each ``[B, D]`` (read as float32), or None for the empty state
            (not materialised: the kernel starts from it).
        block_size: channels per program (power of two >= 16); None autotunes on CUDA.
    Returns:
        ``(out [B, L, D] in r.dtype, (aa, bb, pp) [B, D] float32)``; ``out`` is differentiable in
        ``w, u, k, v, r`` and the initial state (the backward recomputes ``wkv`` for ``dr``);
        the returned state is not.
    Raises:
        TypeError, ValueError: as ``checks.check_wkv4_inputs``; ``r`` not of ``k``'s shape; a bad
            ``block_size``.
    """
    check_wkv4_inputs(w, u, k, v, state)
    if not isinstance(r, torch.Tensor) or r.shape != k.shape:
        raise ValueError(f"r must be [B, L, D] = {tuple(k.shape)}, got "
                         f"{tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__}")
    triton_utils.check_power_of_two("block_size", block_size)
    B, _, D = k.shape
    if v.dtype == torch.float64 or B * D == 0:  # fp64 (gradcheck) and empty batches: the torch path
        if state is None:
            state = wkv4_init_state(B, D, k.device)
        y, aa, bb, pp = WKV4TorchFunction.apply(w, u, k, v, *state)
        return torch.sigmoid(r) * y.to(r.dtype), (aa, bb, pp)
    w, u, k, v, r = (t.contiguous() for t in (w, u, k, v, r))
    aa, bb, pp = (s.contiguous() for s in state) if state is not None else (None, None, None)
    out, aa, bb, pp = WKV4GatedFusedFunction.apply(w, u, k, v, r, aa, bb, pp, block_size)
    return out, (aa, bb, pp)
