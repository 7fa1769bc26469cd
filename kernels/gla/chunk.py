"""Triton chunked gated linear attention (GLA): forward and backward for training and prefill.

Formula (Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient
Training", Sec. 4; the chunk-wise algorithm of fla's ``chunk_gla``; statement in
``naive.py``). Split the sequence into chunks of ``BT`` tokens; inside chunk ``n`` let
``b_i = sum_{m <= i} g_m`` be the chunk-local cumulative log decay (``gc`` below), ``h_n``
the state entering the chunk and ``l`` its last token::

    o_i     = scale * (q_i * exp(b_i)) h_n + sum_{j <= i} A_ij v_j
    A_ij    = scale * sum_k q_ik k_jk exp(b_ik - b_jk)                    (j <= i, same chunk)
    h_{n+1} = diag(exp(b_l)) h_n + sum_j (k_j * exp(b_l - b_j))^T v_j

Backward, with ``dh_n`` the gradient of the state leaving chunk ``n`` (``dh_{NT-1}`` = the
final state's gradient) and ``dA_ij = scale * do_i . v_j``::

    dh_{n-1} = diag(exp(b_l)) dh_n + scale * sum_i (q_i * exp(b_i))^T do_i   (dh_{-1} = d initial state)
    dv_j     = sum_{i >= j} A_ij do_i + (k_j * exp(b_l - b_j)) dh_n
    dq_i     = scale * exp(b_i) * (do_i h_n^T) + sum_{j <= i} dA_ij k_j exp(b_i - b_j)
    dk_j     = exp(b_l - b_j) * (v_j dh_n^T) + sum_{i >= j} dA_ij q_i exp(b_i - b_j)
    dg_t     = sum_{s >= t} (q_s dq_s - k_s dk_s) + rowsum(dS_L * S_L)          (torch)

Numerical stability for any gate (``g <= 0``): a chunk is split into sub-chunks of ``BC = 16``
tokens. Between two different sub-chunks ``I > J`` the pairwise factor is split at the
first row ``r`` of sub-chunk ``I``: ``exp(b_i - b_r) * exp(b_r - b_j)``, both ``<= 1``, so
the products are matmuls (``tl.dot``) of bounded operands; inside a diagonal sub-chunk the
factor ``exp(b_i - b_j)`` is formed pairwise (16 columns, element-wise). Every other
exponent is of the form ``exp(b_i)``, ``exp(b_l - b_j)`` (``<= 1``).

Kernels (grids in brackets): chunk-local cumsum of ``g`` [K blocks, chunks, B*H]; states
``h`` per chunk [K blocks, V blocks, B*H] (sequential over chunks); ``A`` per pair of
sub-chunks [chunks, NC*NC, B*H]; output [V blocks, chunks, B*H]; in the backward ``dh``
[K blocks, V blocks, B*H] (reverse over chunks), ``dA`` [chunks, B*H], ``dv`` [V blocks,
chunks, B*H] and ``dq, dk`` [K blocks, chunks, B*H]. Intermediates (``gc``, ``h``, ``dh``,
``A``, ``dA``, ``dq``, ``dk``) are float32; the forward saves ``gc``, ``h`` and ``A`` for the
backward (memory ``B H (L/BT) K V`` floats for ``h``). Dots run on float32 operands
(IEEE for float32 inputs) in the interpreter; on CUDA with float16/bfloat16 inputs their
operands are cast to the input dtype (tensor cores, float32 accumulation), as fla does.
Kernels are interpreted for CPU tensors (tests) and compiled with ``triton.jit`` for CUDA
tensors (``triton_utils.kernel``); they use Triton builtins and the device functions of
``tiles.py`` and this module only (``triton_utils.device_function``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import triton_utils
from ..triton_utils import device_function
from .checks import check_gla_inputs, gate_grad
from .tiles import dot, head_base, load_row, load_rows, load_state, span, state_tile

__all__ = ["gla_chunk"]

BC_SUB = 16  # sub-chunk length (the tl.dot minimum)


# ----------------------------------------------------------------------------------------------
# device functions
# ----------------------------------------------------------------------------------------------

@device_function
def _gated(x_ptr, gc_ptr, rows, cols, stride, mask, gref, MODE: tl.constexpr):
    """The masked tile ``x * exp(e)`` (x as float32, zeros outside ``mask``) with the exponent
    ``e = b - b_ref`` (MODE 0, query side), ``b_ref - b`` (MODE 1, key side) or ``b`` (MODE 2;
    ``gref`` unused); ``b`` is the chunk-local cumsum ``gc`` and ``gref`` a ``[len(cols)]`` row of it."""
    x = load_rows(x_ptr, rows, cols, stride, mask).to(tl.float32)
    g = load_rows(gc_ptr, rows, cols, stride, mask)
    if MODE == 0:
        e = g - gref[None, :]
    elif MODE == 1:
        e = gref[None, :] - g
    else:
        e = g
    return tl.where(mask, x * tl.exp(e), 0.0)


@device_function
def _state_scan(x_ptr, y_ptr, gc_ptr, all_ptr, init_ptr, final_ptr, scale, L, H, K, V, NT,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_INIT: tl.constexpr,
                REVERSE: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    """The recurrence over chunk boundaries (module docstring), program ``(K block, V block, b*H + h)``.

    Forward (``x, y = k, v``): stores ``h_n`` (entering chunk n) for n = 0.., then
    ``h_{n+1} = diag(exp(b_l)) h_n + (k * exp(b_l - b))^T v``. Backward (``REVERSE``, ``x, y = q,
    do``): stores ``dh_n`` (leaving chunk n) for n = NT-1.., then ``dh_{n-1} = diag(exp(b_l)) dh_n
    + scale (q * exp(b))^T do``. Starts from ``init`` (zeros unless ``HAS_INIT``); writes the
    last value to ``final``.
    """
    i_bh = tl.program_id(2)
    kbase = head_base(i_bh, L, H, K)
    vbase = head_base(i_bh, L, H, V)
    ok, ov, mk, mv, mkv, tile = state_tile(tl.program_id(0), tl.program_id(1), K, V, BK, BV)
    sbase = i_bh.to(tl.int64) * K * V
    S = load_state(init_ptr + sbase, tile, mkv, HAS_INIT, BK, BV)
    hbase = i_bh.to(tl.int64) * NT * K * V
    for i in range(0, NT):
        if REVERSE:
            n = NT - 1 - i
        else:
            n = i
        tl.store(all_ptr + hbase + n * K * V + tile, S, mask=mkv)
        rows, mr = span(n, BT, L)
        mrk = mr[:, None] & mk[None, :]
        gl = load_row(gc_ptr + kbase, tl.minimum(n * BT + BT, L) - 1, H * K, ok, mk)
        if REVERSE:
            xt = load_rows(x_ptr + kbase, rows, ok, H * K, mrk).to(tl.float32)
            gt = load_rows(gc_ptr + kbase, rows, ok, H * K, mrk)
            xd = tl.where(mrk, xt * tl.exp(gt) * scale, 0.0)
        else:
            xd = _gated(x_ptr + kbase, gc_ptr + kbase, rows, ok, H * K, mrk, gl, 1)
        yt = load_rows(y_ptr + vbase, rows, ov, H * V, mr[:, None] & mv[None, :])
        S = S * tl.exp(gl)[:, None] + dot(xd, yt, x_ptr, LOWP, PREC, TRANS_A=True)
    tl.store(final_ptr + sbase + tile, S, mask=mkv)


@device_function
def _value_block(L, H, K, V, NT, BT: tl.constexpr, BV: tl.constexpr):
    """Program ``(V block, chunk i_t, b*H + h)`` of the ``[BT, BV]`` output-like kernels: ``(i_t, i_bh,
    kbase, vbase, rows, mr, ov, mrv, hbase)``, ``hbase`` the offset of the chunk's state."""
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    rows, mr = span(i_t, BT, L)
    ov, mv = span(tl.program_id(0), BV, V)
    hbase = (i_bh.to(tl.int64) * NT + i_t) * K * V
    return i_t, i_bh, head_base(i_bh, L, H, K), head_base(i_bh, L, H, V), rows, mr, ov, mr[:, None] & mv[None, :], hbase


@device_function
def _through_state(acc, x_ptr, gc_ptr, st_ptr, rows, mr, ov, last, H, K, V, BK: tl.constexpr, MODE: tl.constexpr,
                   LOWP: tl.constexpr, PREC: tl.constexpr):
    """``acc + sum_k (x * exp(e)) S`` over the key blocks: the terms through a chunk's state tile
    ``S = st[K, ov]`` (``h_n`` with MODE 2, ``e = b``; ``dh_n`` with MODE 1, ``e = b_l - b`` at row ``last``)."""
    for i_k in range(0, (K + BK - 1) // BK):
        ok, mk = span(i_k, BK, K)
        if MODE == 1:
            gref = load_row(gc_ptr, last, H * K, ok, mk)
        else:
            gref = ok  # a placeholder: MODE 2 reads no reference row
        xg = _gated(x_ptr, gc_ptr, rows, ok, H * K, mr[:, None] & mk[None, :], gref, MODE)
        st = load_rows(st_ptr, ok, ov, V, mk[:, None] & (ov < V)[None, :])
        acc += dot(xg, st, x_ptr, LOWP, PREC)
    return acc


@device_function
def _causal(i_t, L, BT: tl.constexpr):
    """``[BT, BT]`` mask of the intra-chunk pairs ``j <= i`` with token ``j`` inside the sequence."""
    cols = tl.arange(0, BT)
    return (cols[None, :] <= tl.arange(0, BT)[:, None]) & ((i_t * BT + cols) < L)[None, :]


# ----------------------------------------------------------------------------------------------
# forward kernels
# ----------------------------------------------------------------------------------------------

def _cumsum_kernel(g_ptr, gc_ptr, L, H, K, BT: tl.constexpr, BK: tl.constexpr):
    base = head_base(tl.program_id(2), L, H, K)
    rows, mr = span(tl.program_id(1), BT, L)
    ok, mk = span(tl.program_id(0), BK, K)
    m = mr[:, None] & mk[None, :]
    x = load_rows(g_ptr + base, rows, ok, H * K, m).to(tl.float32)
    tl.store(gc_ptr + base + rows[:, None] * H * K + ok[None, :], tl.associative_scan(x, 0, tl.standard._sum_combine),
             mask=m)


def _fwd_h_kernel(k_ptr, v_ptr, gc_ptr, h_ptr, h0_ptr, ht_ptr, L, H, K, V, NT,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                  LOWP: tl.constexpr, PREC: tl.constexpr):
    _state_scan(k_ptr, v_ptr, gc_ptr, h_ptr, h0_ptr, ht_ptr, 1.0, L, H, K, V, NT, BT, BK, BV, HAS_H0, False, LOWP,
                PREC)


def _fwd_A_kernel(q_ptr, k_ptr, gc_ptr, A_ptr, scale, L, H, K,
                  BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, NC: tl.constexpr,
                  LOWP: tl.constexpr, PREC: tl.constexpr):
    i_t = tl.program_id(0)
    i_c = tl.program_id(1)
    i_bh = tl.program_id(2)
    base = head_base(i_bh, L, H, K)
    i_i = i_c // NC
    i_j = i_c % NC
    t0 = i_t * BT
    ri = t0 + i_i * BC + tl.arange(0, BC)
    rj = t0 + i_j * BC + tl.arange(0, BC)
    mi = ri < L
    mj = rj < L
    cols = tl.arange(0, BC)
    a_offs = (i_bh.to(tl.int64) * L + ri[:, None]) * BT + (i_j * BC + cols)[None, :]
    if i_i > i_j:  # split at the first row of sub-chunk i_i: two bounded factors, one matmul
        rref = tl.minimum(t0 + i_i * BC, L - 1)
        acc = tl.full([BC, BC], 0.0, tl.float32)
        for i_k in range(0, (K + BK - 1) // BK):
            ok, mk = span(i_k, BK, K)
            gref = load_row(gc_ptr + base, rref, H * K, ok, mk)
            qg = _gated(q_ptr + base, gc_ptr + base, ri, ok, H * K, mi[:, None] & mk[None, :], gref, 0)
            kg = _gated(k_ptr + base, gc_ptr + base, rj, ok, H * K, mj[:, None] & mk[None, :], gref, 1)
            acc += dot(qg, kg, q_ptr, LOWP, PREC, TRANS_B=True)
        tl.store(A_ptr + a_offs, acc * scale, mask=mi[:, None])
    elif i_i == i_j:  # diagonal sub-chunk: pairwise factors exp(b_i - b_j), one column at a time
        acc = tl.full([BC, BC], 0.0, tl.float32)
        for i_k in range(0, (K + BK - 1) // BK):
            ok, mk = span(i_k, BK, K)
            mik = mi[:, None] & mk[None, :]
            qi = load_rows(q_ptr + base, ri, ok, H * K, mik).to(tl.float32)
            gi = load_rows(gc_ptr + base, ri, ok, H * K, mik)
            for j in tl.static_range(BC):
                tj = t0 + i_j * BC + j
                mkj = mk & ((ok * 0 + tj) < L)
                kj = load_row(k_ptr + base, tj, H * K, ok, mkj).to(tl.float32)
                gj = load_row(gc_ptr + base, tj, H * K, ok, mkj)
                valid = (ri >= tj)[:, None] & mik & mkj[None, :]
                e = tl.exp(tl.where(valid, gi - gj[None, :], 0.0))
                col = tl.reduce(tl.where(valid, qi * kj[None, :] * e, 0.0), 1, tl.standard._sum_combine)
                acc += tl.where(cols[None, :] == j, col[:, None], 0.0)
        tl.store(A_ptr + a_offs, acc * scale, mask=mi[:, None])


def _fwd_o_kernel(q_ptr, v_ptr, gc_ptr, h_ptr, A_ptr, o_ptr, scale, L, H, K, V, NT,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    i_t, i_bh, kbase, vbase, rows, mr, ov, mrv, hbase = _value_block(L, H, K, V, NT, BT, BV)
    acc = tl.full([BT, BV], 0.0, tl.float32)
    acc = _through_state(acc, q_ptr + kbase, gc_ptr + kbase, h_ptr + hbase, rows, mr, ov, 0, H, K, V, BK, 2, LOWP,
                         PREC)
    acc = acc * scale
    Am = tl.load(A_ptr + (i_bh.to(tl.int64) * L + rows[:, None]) * BT + tl.arange(0, BT)[None, :],
                 mask=mr[:, None] & _causal(i_t, L, BT), other=0.0)
    vt = load_rows(v_ptr + vbase, rows, ov, H * V, mrv)
    acc += dot(Am, vt, q_ptr, LOWP, PREC)
    tl.store(o_ptr + vbase + rows[:, None] * H * V + ov[None, :], acc.to(o_ptr.dtype.element_ty), mask=mrv)


# ----------------------------------------------------------------------------------------------
# backward kernels
# ----------------------------------------------------------------------------------------------

def _bwd_dh_kernel(q_ptr, do_ptr, gc_ptr, dh_ptr, dht_ptr, dh0_ptr, scale, L, H, K, V, NT,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DHT: tl.constexpr,
                   LOWP: tl.constexpr, PREC: tl.constexpr):
    _state_scan(q_ptr, do_ptr, gc_ptr, dh_ptr, dht_ptr, dh0_ptr, scale, L, H, K, V, NT, BT, BK, BV, HAS_DHT, True,
                LOWP, PREC)


def _bwd_dA_kernel(do_ptr, v_ptr, dA_ptr, scale, L, H, V,
                   BT: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1)
    rows, mr = span(i_t, BT, L)
    vbase = head_base(i_bh, L, H, V)
    acc = tl.full([BT, BT], 0.0, tl.float32)
    for i_v in range(0, (V + BV - 1) // BV):
        ov, mv = span(i_v, BV, V)
        mrv = mr[:, None] & mv[None, :]
        dot_t = load_rows(do_ptr + vbase, rows, ov, H * V, mrv)
        vt = load_rows(v_ptr + vbase, rows, ov, H * V, mrv)
        acc += dot(dot_t, vt, v_ptr, LOWP, PREC, TRANS_B=True)
    tl.store(dA_ptr + (i_bh.to(tl.int64) * L + rows[:, None]) * BT + tl.arange(0, BT)[None, :],
             tl.where(_causal(i_t, L, BT), acc * scale, 0.0), mask=mr[:, None])


def _bwd_dv_kernel(k_ptr, gc_ptr, A_ptr, do_ptr, dh_ptr, dv_ptr, L, H, K, V, NT,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    i_t, i_bh, kbase, vbase, rows, mr, ov, mrv, hbase = _value_block(L, H, K, V, NT, BT, BV)
    Am = tl.load(A_ptr + (i_bh.to(tl.int64) * L + rows[:, None]) * BT + tl.arange(0, BT)[None, :],
                 mask=mr[:, None] & _causal(i_t, L, BT), other=0.0)
    dot_t = load_rows(do_ptr + vbase, rows, ov, H * V, mrv)
    acc = dot(Am, dot_t, k_ptr, LOWP, PREC, TRANS_A=True)
    acc = _through_state(acc, k_ptr + kbase, gc_ptr + kbase, dh_ptr + hbase, rows, mr, ov,
                         tl.minimum(i_t * BT + BT, L) - 1, H, K, V, BK, 1, LOWP, PREC)
    tl.store(dv_ptr + vbase + rows[:, None] * H * V + ov[None, :], acc.to(dv_ptr.dtype.element_ty), mask=mrv)


def _bwd_dqk_kernel(q_ptr, k_ptr, v_ptr, gc_ptr, h_ptr, dh_ptr, do_ptr, dA_ptr, dq_ptr, dk_ptr,
                    scale, L, H, K, V, NT,
                    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NC: tl.constexpr,
                    LOWP: tl.constexpr, PREC: tl.constexpr):
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    ok, mk = span(tl.program_id(0), BK, K)
    t0 = i_t * BT
    kbase = head_base(i_bh, L, H, K)
    vbase = head_base(i_bh, L, H, V)
    hbase = (i_bh.to(tl.int64) * NT + i_t) * K * V
    abase = i_bh.to(tl.int64) * L
    cols = tl.arange(0, BC)
    gl = load_row(gc_ptr + kbase, tl.minimum(t0 + BT, L) - 1, H * K, ok, mk)
    for I in tl.static_range(NC):
        ri = t0 + I * BC + tl.arange(0, BC)
        mi = ri < L
        mik = mi[:, None] & mk[None, :]
        gI = load_rows(gc_ptr + kbase, ri, ok, H * K, mik)
        dq = tl.full([BC, BK], 0.0, tl.float32)
        dk = tl.full([BC, BK], 0.0, tl.float32)
        # inter-chunk: through the states h_n (entering) and dh_n (leaving)
        for i_v in range(0, (V + BV - 1) // BV):
            ov, mv = span(i_v, BV, V)
            miv = mi[:, None] & mv[None, :]
            mkv = mk[:, None] & mv[None, :]
            doI = load_rows(do_ptr + vbase, ri, ov, H * V, miv)
            vI = load_rows(v_ptr + vbase, ri, ov, H * V, miv)
            dq += dot(doI, load_rows(h_ptr + hbase, ok, ov, V, mkv), q_ptr, LOWP, PREC, TRANS_B=True)
            dk += dot(vI, load_rows(dh_ptr + hbase, ok, ov, V, mkv), q_ptr, LOWP, PREC, TRANS_B=True)
        dq = tl.where(mik, dq * scale * tl.exp(gI), 0.0)
        dk = tl.where(mik, dk * tl.exp(gl[None, :] - gI), 0.0)
        # intra-chunk, earlier sub-chunks J < I (for dq), split at the first row of I
        gref = load_row(gc_ptr + kbase, tl.minimum(t0 + I * BC, L - 1), H * K, ok, mk)
        for J in tl.static_range(I):
            rj = t0 + J * BC + tl.arange(0, BC)
            kg = _gated(k_ptr + kbase, gc_ptr + kbase, rj, ok, H * K, (rj < L)[:, None] & mk[None, :], gref, 1)
            dAIJ = tl.load(dA_ptr + (abase + ri[:, None]) * BT + (J * BC + cols)[None, :], mask=mi[:, None], other=0.0)
            part = dot(dAIJ, kg, q_ptr, LOWP, PREC)
            dq += tl.where(mik, tl.exp(gI - gref[None, :]) * part, 0.0)
        # intra-chunk, later sub-chunks I2 > I (for dk), split at the first row of I2
        for I2 in tl.static_range(I + 1, NC):
            r2 = t0 + I2 * BC + tl.arange(0, BC)
            m2 = r2 < L
            gref2 = load_row(gc_ptr + kbase, tl.minimum(t0 + I2 * BC, L - 1), H * K, ok, mk)
            qg = _gated(q_ptr + kbase, gc_ptr + kbase, r2, ok, H * K, m2[:, None] & mk[None, :], gref2, 0)
            dA2 = tl.load(dA_ptr + (abase + r2[:, None]) * BT + (I * BC + cols)[None, :], mask=m2[:, None], other=0.0)
            part = dot(dA2, qg, q_ptr, LOWP, PREC, TRANS_A=True)
            dk += tl.where(mik, tl.exp(gref2[None, :] - gI) * part, 0.0)
        # diagonal sub-chunk: pairwise factors
        for j in tl.static_range(BC):
            tj = t0 + I * BC + j
            mkj = mk & ((ok * 0 + tj) < L)
            kj = load_row(k_ptr + kbase, tj, H * K, ok, mkj).to(tl.float32)
            qj = load_row(q_ptr + kbase, tj, H * K, ok, mkj).to(tl.float32)
            gj = load_row(gc_ptr + kbase, tj, H * K, ok, mkj)
            dAcol = tl.load(dA_ptr + (abase + ri) * BT + I * BC + j, mask=mi, other=0.0)       # dA[i, j], i in I
            dArow = tl.load(dA_ptr + (abase + tj) * BT + I * BC + cols, mask=mi & ((ri * 0 + tj) < L), other=0.0)  # dA[j, r]
            vq = (ri >= tj)[:, None] & mik & mkj[None, :]
            dq += tl.where(vq, dAcol[:, None] * kj[None, :] * tl.exp(tl.where(vq, gI - gj[None, :], 0.0)), 0.0)
            vk = (ri <= tj)[:, None] & mik & mkj[None, :]
            dk += tl.where(vk, dArow[:, None] * qj[None, :] * tl.exp(tl.where(vk, gj[None, :] - gI, 0.0)), 0.0)
        tl.store(dq_ptr + kbase + ri[:, None] * H * K + ok[None, :], dq, mask=mik)
        tl.store(dk_ptr + kbase + ri[:, None] * H * K + ok[None, :], dk, mask=mik)


# ----------------------------------------------------------------------------------------------
# compilation / launch
# ----------------------------------------------------------------------------------------------

def _config(q: torch.Tensor, v: torch.Tensor, chunk_size: int | None, block_k: int | None, block_v: int | None):
    """``(BT, BK, BV, NT, NK, NV, NC, extra, meta)``: tile sizes, their counts over ``L, K, V`` and the
    sub-chunks per chunk, the CUDA launch options ``extra`` and ``meta`` = ``extra`` plus the
    dot constexprs ``LOWP`` (fp16/bf16 operands on CUDA) and ``PREC``."""
    cuda = q.device.type == "cuda"
    L, K, V = q.shape[1], q.shape[-1], v.shape[-1]
    BT = chunk_size or 64
    BK = block_k or triton_utils.default_block(K, 64)
    BV = block_v or triton_utils.default_block(V, 64)
    extra = {"num_warps": 4} if cuda else {}
    meta = dict(LOWP=cuda and q.dtype in (torch.float16, torch.bfloat16),
                PREC="ieee" if (not cuda or q.dtype == torch.float32) else "tf32", **extra)
    return BT, BK, BV, triton.cdiv(L, BT), triton.cdiv(K, BK), triton.cdiv(V, BV), BT // BC_SUB, extra, meta


def gla_chunk_forward(q, k, v, g, h0, scale, chunk_size=None, block_k=None, block_v=None):
    """The forward kernels on contiguous ``q, k, g [B, L, H, K]``, ``v [B, L, H, V]``, ``h0 [B, H, K, V]
    | None`` -> ``(o [B, L, H, V] in v.dtype, ht [B, H, K, V] fp32, saved)``, ``saved = (gc, h, A)``
    (the in-chunk gate cumsum, the chunk-boundary states and the intra-chunk scores, fp32) that
    :func:`gla_chunk_backward` reads. No autograd."""
    B, L, H, K = q.shape
    V = v.shape[-1]
    dev, run, empty, f32 = q.device, triton_utils.kernel, triton_utils.empty, torch.float32
    BT, BK, BV, NT, NK, NV, NC, extra, meta = _config(q, v, chunk_size, block_k, block_v)
    gc = empty((B, L, H, K), f32, dev)
    run(_cumsum_kernel, dev)[(NK, NT, B * H)](g, gc, L, H, K, BT=BT, BK=BK, **extra)
    h = empty((B, H, NT, K, V), f32, dev)
    ht = empty((B, H, K, V), f32, dev)
    h0c = h0.contiguous() if h0 is not None else ht
    run(_fwd_h_kernel, dev)[(NK, NV, B * H)](k, v, gc, h, h0c, ht, L, H, K, V, NT, BT=BT, BK=BK, BV=BV,
                                             HAS_H0=h0 is not None, **meta)
    A = empty((B, H, L, BT), f32, dev)
    run(_fwd_A_kernel, dev)[(NT, NC * NC, B * H)](q, k, gc, A, float(scale), L, H, K, BT=BT, BC=BC_SUB, BK=BK,
                                                  NC=NC, **meta)
    o = empty((B, L, H, V), v.dtype, dev)
    run(_fwd_o_kernel, dev)[(NV, NT, B * H)](q, v, gc, h, A, o, float(scale), L, H, K, V, NT, BT=BT, BK=BK, BV=BV,
                                             **meta)
    return o, ht, (gc, h, A)


def gla_chunk_backward(q, k, v, saved, ht, do, dht, scale, chunk_size=None, block_k=None, block_v=None):
    """The backward kernels on :func:`gla_chunk_forward`'s ``saved`` and final state ``ht``: ``do [B, L,
    H, V]``, ``dht [B, H, K, V] | None`` -> ``(dq, dk fp32 [B, L, H, K], dv [B, L, H, V] in v.dtype,
    dg fp32, dh0 [B, H, K, V] fp32)``."""
    gc, h, A = saved
    B, L, H, K = q.shape
    V = v.shape[-1]
    dev, run, empty, f32 = q.device, triton_utils.kernel, triton_utils.empty, torch.float32
    BT, BK, BV, NT, NK, NV, NC, _, meta = _config(q, v, chunk_size, block_k, block_v)
    do = do.contiguous()
    dh = empty((B, H, NT, K, V), f32, dev)
    dh0 = empty((B, H, K, V), f32, dev)
    dhtc = dht.contiguous() if dht is not None else dh0
    run(_bwd_dh_kernel, dev)[(NK, NV, B * H)](q, do, gc, dh, dhtc, dh0, float(scale), L, H, K, V, NT, BT=BT, BK=BK,
                                              BV=BV, HAS_DHT=dht is not None, **meta)
    dA = empty((B, H, L, BT), f32, dev)
    run(_bwd_dA_kernel, dev)[(NT, B * H)](do, v, dA, float(scale), L, H, V, BT=BT, BV=BV, **meta)
    dv = empty((B, L, H, V), v.dtype, dev)
    run(_bwd_dv_kernel, dev)[(NV, NT, B * H)](k, gc, A, do, dh, dv, L, H, K, V, NT, BT=BT, BK=BK, BV=BV, **meta)
    dq = empty((B, L, H, K), f32, dev)
    dk = empty((B, L, H, K), f32, dev)
    run(_bwd_dqk_kernel, dev)[(NK, NT, B * H)](q, k, v, gc, h, dh, do, dA, dq, dk, float(scale), L, H, K, V, NT,
                                               BT=BT, BC=BC_SUB, BK=BK, BV=BV, NC=NC, **meta)
    return dq, dk, dv, gate_grad(q, k, dq, dk, ht, dht), dh0


class GLAChunkFunction(torch.autograd.Function):
    """``(q, k, g [B, L, H, K], v [B, L, H, V], h0 | None) -> (o [B, L, H, V], ht [B, H, K, V] fp32)``."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, chunk_size, block_k, block_v):
        o, ht, saved = gla_chunk_forward(q, k, v, g, h0, scale, chunk_size, block_k, block_v)
        ctx.save_for_backward(q, k, v, *saved, ht)
        ctx.cfg = (scale, chunk_size, block_k, block_v)
        ctx.dtypes = (g.dtype, h0.dtype if h0 is not None else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, h, A, ht = ctx.saved_tensors
        dq, dk, dv, dg, dh0 = gla_chunk_backward(q, k, v, (gc, h, A), ht, do, dht, *ctx.cfg)
        g_dtype, h0_dtype = ctx.dtypes
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g_dtype), dh0.to(h0_dtype) if h0_dtype is not None else None,
                None, None, None, None)


def gla_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
              initial_state: torch.Tensor | None = None, *, chunk_size: int | None = None,
              block_k: int | None = None, block_v: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GLA on Triton (formula and algorithm: module docstring; Yang et al. 2024, GLA).

    Args:
        q, k, g: ``[B, L, H, K]``; v: ``[B, L, H, V]``; q, k, v of one float dtype
            (float32/float16/bfloat16; g any float dtype, ``g <= 0`` for a decaying state), on
            CUDA (compiled) or CPU (Triton interpreter, for tests). Non-contiguous inputs are copied.
        scale: multiplies ``q`` (default ``K ** -0.5``).
        initial_state: ``[B, H, K, V]`` (read as float32) or None for zeros.
        chunk_size: tokens per chunk, a multiple of 16 and a power of two (default 64).
        block_k, block_v: key / value channels per program (powers of two >= 16; default
            ``min(next_pow2(dim), 64)``). Tuning/testing knobs.
    Returns:
        ``(o [B, L, H, V] in v.dtype, final state [B, H, K, V] float32)``, differentiable in
        q, k, v, g and the initial state.
    Raises:
        TypeError: non-float inputs, q/k/v of different dtypes.
        ValueError: shape mismatch, ``L == 0``, devices differ, bad chunk or block sizes.
    """
    B, L, H, K, V = check_gla_inputs(q, k, v, g, initial_state)
    triton_utils.check_power_of_two("chunk_size", chunk_size, BC_SUB)
    triton_utils.check_power_of_two("block_k", block_k)
    triton_utils.check_power_of_two("block_v", block_v)
    scale = K ** -0.5 if scale is None else float(scale)
    q, k, v, g = (t.contiguous() for t in (q, k, v, g))
    return GLAChunkFunction.apply(q, k, v, g, initial_state, scale, chunk_size, block_k, block_v)
