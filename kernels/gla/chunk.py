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
tensors; they use Triton builtins only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import triton_kernel
from .checks import check_gla_inputs, gate_grad

__all__ = ["gla_chunk"]

BC_SUB = 16  # sub-chunk length (the tl.dot minimum)


def _empty(shape, dtype, device):
    """Every uninitialised allocation of this module goes through here (tests fill it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------
# forward kernels
# ----------------------------------------------------------------------------------------------

def _cumsum_kernel(g_ptr, gc_ptr, L, H, K, BT: tl.constexpr, BK: tl.constexpr):
    i_k = tl.program_id(0)
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    b = i_bh // H
    h = i_bh % H
    rows = i_t * BT + tl.arange(0, BT)
    ok = i_k * BK + tl.arange(0, BK)
    m = (rows < L)[:, None] & (ok < K)[None, :]
    offs = (b.to(tl.int64) * L * H + h) * K + rows[:, None] * H * K + ok[None, :]
    x = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(gc_ptr + offs, tl.associative_scan(x, 0, tl.standard._sum_combine), mask=m)


def _fwd_h_kernel(k_ptr, v_ptr, gc_ptr, h_ptr, h0_ptr, ht_ptr, L, H, K, V, NT,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                  LOWP: tl.constexpr, PREC: tl.constexpr):
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_bh = tl.program_id(2)
    b = i_bh // H
    h = i_bh % H
    if LOWP:
        DT = k_ptr.dtype.element_ty
    else:
        DT = tl.float32
    ok = i_k * BK + tl.arange(0, BK)
    ov = i_v * BV + tl.arange(0, BV)
    mk = ok < K
    mv = ov < V
    mkv = mk[:, None] & mv[None, :]
    tile = ok[:, None] * V + ov[None, :]
    if HAS_H0:
        S = tl.load(h0_ptr + i_bh.to(tl.int64) * K * V + tile, mask=mkv, other=0.0).to(tl.float32)
    else:
        S = tl.full([BK, BV], 0.0, tl.float32)
    kbase = (b.to(tl.int64) * L * H + h) * K
    vbase = (b.to(tl.int64) * L * H + h) * V
    hbase = i_bh.to(tl.int64) * NT * K * V
    for n in range(0, NT):
        tl.store(h_ptr + hbase + n * K * V + tile, S, mask=mkv)
        rows = n * BT + tl.arange(0, BT)
        mr = rows < L
        last = tl.minimum(n * BT + BT, L) - 1
        mrk = mr[:, None] & mk[None, :]
        kt = tl.load(k_ptr + kbase + rows[:, None] * H * K + ok[None, :], mask=mrk, other=0.0).to(tl.float32)
        gt = tl.load(gc_ptr + kbase + rows[:, None] * H * K + ok[None, :], mask=mrk, other=0.0)
        gl = tl.load(gc_ptr + kbase + last * H * K + ok, mask=mk, other=0.0)
        vt = tl.load(v_ptr + vbase + rows[:, None] * H * V + ov[None, :], mask=mr[:, None] & mv[None, :], other=0.0)
        kd = tl.where(mrk, kt * tl.exp(gl[None, :] - gt), 0.0)
        S = S * tl.exp(gl)[:, None] + tl.dot(tl.trans(kd.to(DT)), vt.to(DT), input_precision=PREC)
    tl.store(ht_ptr + i_bh.to(tl.int64) * K * V + tile, S, mask=mkv)


def _fwd_A_kernel(q_ptr, k_ptr, gc_ptr, A_ptr, scale, L, H, K,
                  BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, NC: tl.constexpr,
                  LOWP: tl.constexpr, PREC: tl.constexpr):
    i_t = tl.program_id(0)
    i_c = tl.program_id(1)
    i_bh = tl.program_id(2)
    b = i_bh // H
    h = i_bh % H
    if LOWP:
        DT = q_ptr.dtype.element_ty
    else:
        DT = tl.float32
    i_i = i_c // NC
    i_j = i_c % NC
    t0 = i_t * BT
    ri = t0 + i_i * BC + tl.arange(0, BC)
    rj = t0 + i_j * BC + tl.arange(0, BC)
    mi = ri < L
    mj = rj < L
    cols = tl.arange(0, BC)
    base = (b.to(tl.int64) * L * H + h) * K
    a_offs = (i_bh.to(tl.int64) * L + ri[:, None]) * BT + (i_j * BC + cols)[None, :]
    if i_i > i_j:
        rref = tl.minimum(t0 + i_i * BC, L - 1)
        acc = tl.full([BC, BC], 0.0, tl.float32)
        for i_k in range(0, (K + BK - 1) // BK):
            ok = i_k * BK + tl.arange(0, BK)
            mk = ok < K
            mik = mi[:, None] & mk[None, :]
            mjk = mj[:, None] & mk[None, :]
            gref = tl.load(gc_ptr + base + rref * H * K + ok, mask=mk, other=0.0)
            qi = tl.load(q_ptr + base + ri[:, None] * H * K + ok[None, :], mask=mik, other=0.0).to(tl.float32)
            gi = tl.load(gc_ptr + base + ri[:, None] * H * K + ok[None, :], mask=mik, other=0.0)
            kj = tl.load(k_ptr + base + rj[:, None] * H * K + ok[None, :], mask=mjk, other=0.0).to(tl.float32)
            gj = tl.load(gc_ptr + base + rj[:, None] * H * K + ok[None, :], mask=mjk, other=0.0)
            qg = tl.where(mik, qi * tl.exp(gi - gref[None, :]), 0.0)
            kg = tl.where(mjk, kj * tl.exp(gref[None, :] - gj), 0.0)
            acc += tl.dot(qg.to(DT), tl.trans(kg.to(DT)), input_precision=PREC)
        tl.store(A_ptr + a_offs, acc * scale, mask=mi[:, None])
    elif i_i == i_j:
        acc = tl.full([BC, BC], 0.0, tl.float32)
        for i_k in range(0, (K + BK - 1) // BK):
            ok = i_k * BK + tl.arange(0, BK)
            mk = ok < K
            mik = mi[:, None] & mk[None, :]
            qi = tl.load(q_ptr + base + ri[:, None] * H * K + ok[None, :], mask=mik, other=0.0).to(tl.float32)
            gi = tl.load(gc_ptr + base + ri[:, None] * H * K + ok[None, :], mask=mik, other=0.0)
            for j in tl.static_range(BC):
                tj = t0 + i_j * BC + j
                mkj = mk & ((ok * 0 + tj) < L)
                kj = tl.load(k_ptr + base + tj * H * K + ok, mask=mkj, other=0.0).to(tl.float32)
                gj = tl.load(gc_ptr + base + tj * H * K + ok, mask=mkj, other=0.0)
                valid = (ri >= tj)[:, None] & mik & mkj[None, :]
                e = tl.exp(tl.where(valid, gi - gj[None, :], 0.0))
                col = tl.reduce(tl.where(valid, qi * kj[None, :] * e, 0.0), 1, tl.standard._sum_combine)
                acc += tl.where(cols[None, :] == j, col[:, None], 0.0)
        tl.store(A_ptr + a_offs, acc * scale, mask=mi[:, None])


def _fwd_o_kernel(q_ptr, v_ptr, gc_ptr, h_ptr, A_ptr, o_ptr, scale, L, H, K, V, NT,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    i_v = tl.program_id(0)
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    b = i_bh // H
    h = i_bh % H
    if LOWP:
        DT = q_ptr.dtype.element_ty
    else:
        DT = tl.float32
    rows = i_t * BT + tl.arange(0, BT)
    mr = rows < L
    ov = i_v * BV + tl.arange(0, BV)
    mv = ov < V
    kbase = (b.to(tl.int64) * L * H + h) * K
    vbase = (b.to(tl.int64) * L * H + h) * V
    hbase = (i_bh.to(tl.int64) * NT + i_t) * K * V
    acc = tl.full([BT, BV], 0.0, tl.float32)
    for i_k in range(0, (K + BK - 1) // BK):
        ok = i_k * BK + tl.arange(0, BK)
        mk = ok < K
        mrk = mr[:, None] & mk[None, :]
        qt = tl.load(q_ptr + kbase + rows[:, None] * H * K + ok[None, :], mask=mrk, other=0.0).to(tl.float32)
        gt = tl.load(gc_ptr + kbase + rows[:, None] * H * K + ok[None, :], mask=mrk, other=0.0)
        qg = tl.where(mrk, qt * tl.exp(gt), 0.0)
        hn = tl.load(h_ptr + hbase + ok[:, None] * V + ov[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
        acc += tl.dot(qg.to(DT), hn.to(DT), input_precision=PREC)
    acc = acc * scale
    cols = tl.arange(0, BT)
    am = mr[:, None] & (cols[None, :] <= tl.arange(0, BT)[:, None]) & ((i_t * BT + cols) < L)[None, :]
    Am = tl.load(A_ptr + (i_bh.to(tl.int64) * L + rows[:, None]) * BT + cols[None, :], mask=am, other=0.0)
    mrv = mr[:, None] & mv[None, :]
    vt = tl.load(v_ptr + vbase + rows[:, None] * H * V + ov[None, :], mask=mrv, other=0.0)
    acc += tl.dot(Am.to(DT), vt.to(DT), input_precision=PREC)
    tl.store(o_ptr + vbase + rows[:, None] * H * V + ov[None, :], acc.to(o_ptr.dtype.element_ty), mask=mrv)


# ----------------------------------------------------------------------------------------------
# backward kernels
# ----------------------------------------------------------------------------------------------

def _bwd_dh_kernel(q_ptr, do_ptr, gc_ptr, dh_ptr, dht_ptr, dh0_ptr, scale, L, H, K, V, NT,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DHT: tl.constexpr,
                   LOWP: tl.constexpr, PREC: tl.constexpr):
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_bh = tl.program_id(2)
    b = i_bh // H
    h = i_bh % H
    if LOWP:
        DT = q_ptr.dtype.element_ty
    else:
        DT = tl.float32
    ok = i_k * BK + tl.arange(0, BK)
    ov = i_v * BV + tl.arange(0, BV)
    mk = ok < K
    mv = ov < V
    mkv = mk[:, None] & mv[None, :]
    tile = ok[:, None] * V + ov[None, :]
    if HAS_DHT:
        D = tl.load(dht_ptr + i_bh.to(tl.int64) * K * V + tile, mask=mkv, other=0.0).to(tl.float32)
    else:
        D = tl.full([BK, BV], 0.0, tl.float32)
    kbase = (b.to(tl.int64) * L * H + h) * K
    vbase = (b.to(tl.int64) * L * H + h) * V
    hbase = i_bh.to(tl.int64) * NT * K * V
    for i in range(0, NT):
        n = NT - 1 - i
        tl.store(dh_ptr + hbase + n * K * V + tile, D, mask=mkv)
        rows = n * BT + tl.arange(0, BT)
        mr = rows < L
        last = tl.minimum(n * BT + BT, L) - 1
        mrk = mr[:, None] & mk[None, :]
        qt = tl.load(q_ptr + kbase + rows[:, None] * H * K + ok[None, :], mask=mrk, other=0.0).to(tl.float32)
        gt = tl.load(gc_ptr + kbase + rows[:, None] * H * K + ok[None, :], mask=mrk, other=0.0)
        gl = tl.load(gc_ptr + kbase + last * H * K + ok, mask=mk, other=0.0)
        dot = tl.load(do_ptr + vbase + rows[:, None] * H * V + ov[None, :], mask=mr[:, None] & mv[None, :], other=0.0)
        qg = tl.where(mrk, qt * tl.exp(gt) * scale, 0.0)
        D = D * tl.exp(gl)[:, None] + tl.dot(tl.trans(qg.to(DT)), dot.to(DT), input_precision=PREC)
    tl.store(dh0_ptr + i_bh.to(tl.int64) * K * V + tile, D, mask=mkv)


def _bwd_dA_kernel(do_ptr, v_ptr, dA_ptr, scale, L, H, V,
                   BT: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1)
    b = i_bh // H
    h = i_bh % H
    if LOWP:
        DT = v_ptr.dtype.element_ty
    else:
        DT = tl.float32
    rows = i_t * BT + tl.arange(0, BT)
    mr = rows < L
    cols = tl.arange(0, BT)
    vbase = (b.to(tl.int64) * L * H + h) * V
    acc = tl.full([BT, BT], 0.0, tl.float32)
    for i_v in range(0, (V + BV - 1) // BV):
        ov = i_v * BV + tl.arange(0, BV)
        mrv = mr[:, None] & (ov < V)[None, :]
        dot = tl.load(do_ptr + vbase + rows[:, None] * H * V + ov[None, :], mask=mrv, other=0.0)
        vt = tl.load(v_ptr + vbase + rows[:, None] * H * V + ov[None, :], mask=mrv, other=0.0)
        acc += tl.dot(dot.to(DT), tl.trans(vt.to(DT)), input_precision=PREC)
    keep = (cols[None, :] <= tl.arange(0, BT)[:, None]) & ((i_t * BT + cols) < L)[None, :]
    tl.store(dA_ptr + (i_bh.to(tl.int64) * L + rows[:, None]) * BT + cols[None, :],
             tl.where(keep, acc * scale, 0.0), mask=mr[:, None])


def _bwd_dv_kernel(k_ptr, gc_ptr, A_ptr, do_ptr, dh_ptr, dv_ptr, L, H, K, V, NT,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    i_v = tl.program_id(0)
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    b = i_bh // H
    h = i_bh % H
    if LOWP:
        DT = k_ptr.dtype.element_ty
    else:
        DT = tl.float32
    rows = i_t * BT + tl.arange(0, BT)
    mr = rows < L
    ov = i_v * BV + tl.arange(0, BV)
    mv = ov < V
    mrv = mr[:, None] & mv[None, :]
    kbase = (b.to(tl.int64) * L * H + h) * K
    vbase = (b.to(tl.int64) * L * H + h) * V
    hbase = (i_bh.to(tl.int64) * NT + i_t) * K * V
    cols = tl.arange(0, BT)
    am = mr[:, None] & (cols[None, :] <= tl.arange(0, BT)[:, None]) & ((i_t * BT + cols) < L)[None, :]
    Am = tl.load(A_ptr + (i_bh.to(tl.int64) * L + rows[:, None]) * BT + cols[None, :], mask=am, other=0.0)
    dot = tl.load(do_ptr + vbase + rows[:, None] * H * V + ov[None, :], mask=mrv, other=0.0)
    acc = tl.dot(tl.trans(Am).to(DT), dot.to(DT), input_precision=PREC)
    last = tl.minimum(i_t * BT + BT, L) - 1
    for i_k in range(0, (K + BK - 1) // BK):
        ok = i_k * BK + tl.arange(0, BK)
        mk = ok < K
        mrk = mr[:, None] & mk[None, :]
        kt = tl.load(k_ptr + kbase + rows[:, None] * H * K + ok[None, :], mask=mrk, other=0.0).to(tl.float32)
        gt = tl.load(gc_ptr + kbase + rows[:, None] * H * K + ok[None, :], mask=mrk, other=0.0)
        gl = tl.load(gc_ptr + kbase + last * H * K + ok, mask=mk, other=0.0)
        kd = tl.where(mrk, kt * tl.exp(gl[None, :] - gt), 0.0)
        dhn = tl.load(dh_ptr + hbase + ok[:, None] * V + ov[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
        acc += tl.dot(kd.to(DT), dhn.to(DT), input_precision=PREC)
    tl.store(dv_ptr + vbase + rows[:, None] * H * V + ov[None, :], acc.to(dv_ptr.dtype.element_ty), mask=mrv)


def _bwd_dqk_kernel(q_ptr, k_ptr, v_ptr, gc_ptr, h_ptr, dh_ptr, do_ptr, dA_ptr, dq_ptr, dk_ptr,
                    scale, L, H, K, V, NT,
                    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NC: tl.constexpr,
                    LOWP: tl.constexpr, PREC: tl.constexpr):
    i_k = tl.program_id(0)
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    b = i_bh // H
    h = i_bh % H
    if LOWP:
        DT = q_ptr.dtype.element_ty
    else:
        DT = tl.float32
    ok = i_k * BK + tl.arange(0, BK)
    mk = ok < K
    t0 = i_t * BT
    kbase = (b.to(tl.int64) * L * H + h) * K
    vbase = (b.to(tl.int64) * L * H + h) * V
    hbase = (i_bh.to(tl.int64) * NT + i_t) * K * V
    abase = i_bh.to(tl.int64) * L
    cols = tl.arange(0, BC)
    last = tl.minimum(t0 + BT, L) - 1
    gl = tl.load(gc_ptr + kbase + last * H * K + ok, mask=mk, other=0.0)
    for I in tl.static_range(NC):
        ri = t0 + I * BC + tl.arange(0, BC)
        mi = ri < L
        mik = mi[:, None] & mk[None, :]
        gI = tl.load(gc_ptr + kbase + ri[:, None] * H * K + ok[None, :], mask=mik, other=0.0)
        dq = tl.full([BC, BK], 0.0, tl.float32)
        dk = tl.full([BC, BK], 0.0, tl.float32)
        # inter-chunk: through the states h_n (entering) and dh_n (leaving)
        for i_v in range(0, (V + BV - 1) // BV):
            ov = i_v * BV + tl.arange(0, BV)
            mv = ov < V
            miv = mi[:, None] & mv[None, :]
            mkv = mk[:, None] & mv[None, :]
            doI = tl.load(do_ptr + vbase + ri[:, None] * H * V + ov[None, :], mask=miv, other=0.0)
            vI = tl.load(v_ptr + vbase + ri[:, None] * H * V + ov[None, :], mask=miv, other=0.0)
            hn = tl.load(h_ptr + hbase + ok[:, None] * V + ov[None, :], mask=mkv, other=0.0)
            dhn = tl.load(dh_ptr + hbase + ok[:, None] * V + ov[None, :], mask=mkv, other=0.0)
            dq += tl.dot(doI.to(DT), tl.trans(hn.to(DT)), input_precision=PREC)
            dk += tl.dot(vI.to(DT), tl.trans(dhn.to(DT)), input_precision=PREC)
        dq = tl.where(mik, dq * scale * tl.exp(gI), 0.0)
        dk = tl.where(mik, dk * tl.exp(gl[None, :] - gI), 0.0)
        # intra-chunk, earlier sub-chunks J < I (for dq), split at the first row of I
        rref = tl.minimum(t0 + I * BC, L - 1)
        gref = tl.load(gc_ptr + kbase + rref * H * K + ok, mask=mk, other=0.0)
        for J in tl.static_range(I):
            rj = t0 + J * BC + tl.arange(0, BC)
            mjk = (rj < L)[:, None] & mk[None, :]
            kJ = tl.load(k_ptr + kbase + rj[:, None] * H * K + ok[None, :], mask=mjk, other=0.0).to(tl.float32)
            gJ = tl.load(gc_ptr + kbase + rj[:, None] * H * K + ok[None, :], mask=mjk, other=0.0)
            kg = tl.where(mjk, kJ * tl.exp(gref[None, :] - gJ), 0.0)
            dAIJ = tl.load(dA_ptr + (abase + ri[:, None]) * BT + (J * BC + cols)[None, :], mask=mi[:, None], other=0.0)
            part = tl.dot(dAIJ.to(DT), kg.to(DT), input_precision=PREC)
            dq += tl.where(mik, tl.exp(gI - gref[None, :]) * part, 0.0)
        # intra-chunk, later sub-chunks I2 > I (for dk), split at the first row of I2
        for I2 in tl.static_range(I + 1, NC):
            r2 = t0 + I2 * BC + tl.arange(0, BC)
            m2 = r2 < L
            m2k = m2[:, None] & mk[None, :]
            rref2 = tl.minimum(t0 + I2 * BC, L - 1)
            gref2 = tl.load(gc_ptr + kbase + rref2 * H * K + ok, mask=mk, other=0.0)
            q2 = tl.load(q_ptr + kbase + r2[:, None] * H * K + ok[None, :], mask=m2k, other=0.0).to(tl.float32)
            g2 = tl.load(gc_ptr + kbase + r2[:, None] * H * K + ok[None, :], mask=m2k, other=0.0)
            qg = tl.where(m2k, q2 * tl.exp(g2 - gref2[None, :]), 0.0)
            dA2 = tl.load(dA_ptr + (abase + r2[:, None]) * BT + (I * BC + cols)[None, :], mask=m2[:, None], other=0.0)
            part = tl.dot(tl.trans(dA2).to(DT), qg.to(DT), input_precision=PREC)
            dk += tl.where(mik, tl.exp(gref2[None, :] - gI) * part, 0.0)
        # diagonal sub-chunk: pairwise factors
        for j in tl.static_range(BC):
            tj = t0 + I * BC + j
            mkj = mk & ((ok * 0 + tj) < L)
            kj = tl.load(k_ptr + kbase + tj * H * K + ok, mask=mkj, other=0.0).to(tl.float32)
            qj = tl.load(q_ptr + kbase + tj * H * K + ok, mask=mkj, other=0.0).to(tl.float32)
            gj = tl.load(gc_ptr + kbase + tj * H * K + ok, mask=mkj, other=0.0)
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

def _kernel(fn, device: torch.device):
    """Interpreted on CPU, ``triton.jit`` on CUDA (``dispatch.triton_kernel``)."""
    return triton_kernel(fn, device)


def _config(q: torch.Tensor, K: int, V: int, chunk_size: int | None, block_k: int | None, block_v: int | None):
    cuda = q.device.type == "cuda"
    BT = chunk_size or 64
    BK = block_k or min(max(triton.next_power_of_2(K), 16), 64)
    BV = block_v or min(max(triton.next_power_of_2(V), 16), 64)
    lowp = cuda and q.dtype in (torch.float16, torch.bfloat16)
    prec = "ieee" if (not cuda or q.dtype == torch.float32) else "tf32"
    extra = {"num_warps": 4} if cuda else {}
    return BT, BK, BV, lowp, prec, extra


class GLAChunkFunction(torch.autograd.Function):
    """``(q, k, g [B, L, H, K], v [B, L, H, V], h0 | None) -> (o [B, L, H, V], ht [B, H, K, V] fp32)``."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, chunk_size, block_k, block_v):
        B, L, H, K = q.shape
        V = v.shape[-1]
        dev = q.device
        BT, BK, BV, lowp, prec, extra = _config(q, K, V, chunk_size, block_k, block_v)
        NT, NK, NV, NC = triton.cdiv(L, BT), triton.cdiv(K, BK), triton.cdiv(V, BV), BT // BC_SUB
        gc = _empty((B, L, H, K), torch.float32, dev)
        _kernel(_cumsum_kernel, dev)[(NK, NT, B * H)](g, gc, L, H, K, BT=BT, BK=BK, **extra)
        h = _empty((B, H, NT, K, V), torch.float32, dev)
        ht = _empty((B, H, K, V), torch.float32, dev)
        h0c = h0.contiguous() if h0 is not None else ht
        _kernel(_fwd_h_kernel, dev)[(NK, NV, B * H)](k, v, gc, h, h0c, ht, L, H, K, V, NT, BT=BT, BK=BK, BV=BV,
                                                     HAS_H0=h0 is not None, LOWP=lowp, PREC=prec, **extra)
        A = _empty((B, H, L, BT), torch.float32, dev)
        _kernel(_fwd_A_kernel, dev)[(NT, NC * NC, B * H)](q, k, gc, A, float(scale), L, H, K, BT=BT, BC=BC_SUB,
                                                          BK=BK, NC=NC, LOWP=lowp, PREC=prec, **extra)
        o = _empty((B, L, H, V), v.dtype, dev)
        _kernel(_fwd_o_kernel, dev)[(NV, NT, B * H)](q, v, gc, h, A, o, float(scale), L, H, K, V, NT, BT=BT, BK=BK,
                                                     BV=BV, LOWP=lowp, PREC=prec, **extra)
        ctx.save_for_backward(q, k, v, gc, h, A, ht)
        ctx.cfg = (scale, chunk_size, block_k, block_v)
        ctx.dtypes = (g.dtype, h0.dtype if h0 is not None else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, h, A, ht = ctx.saved_tensors
        scale, chunk_size, block_k, block_v = ctx.cfg
        B, L, H, K = q.shape
        V = v.shape[-1]
        dev = q.device
        BT, BK, BV, lowp, prec, extra = _config(q, K, V, chunk_size, block_k, block_v)
        NT, NK, NV, NC = triton.cdiv(L, BT), triton.cdiv(K, BK), triton.cdiv(V, BV), BT // BC_SUB
        do = do.contiguous()
        dh = _empty((B, H, NT, K, V), torch.float32, dev)
        dh0 = _empty((B, H, K, V), torch.float32, dev)
        dhtc = dht.contiguous() if dht is not None else dh0
        _kernel(_bwd_dh_kernel, dev)[(NK, NV, B * H)](q, do, gc, dh, dhtc, dh0, float(scale), L, H, K, V, NT, BT=BT,
                                                      BK=BK, BV=BV, HAS_DHT=dht is not None, LOWP=lowp, PREC=prec,
                                                      **extra)
        dA = _empty((B, H, L, BT), torch.float32, dev)
        _kernel(_bwd_dA_kernel, dev)[(NT, B * H)](do, v, dA, float(scale), L, H, V, BT=BT, BV=BV, LOWP=lowp,
                                                  PREC=prec, **extra)
        dv = _empty((B, L, H, V), v.dtype, dev)
        _kernel(_bwd_dv_kernel, dev)[(NV, NT, B * H)](k, gc, A, do, dh, dv, L, H, K, V, NT, BT=BT, BK=BK, BV=BV,
                                                      LOWP=lowp, PREC=prec, **extra)
        dq = _empty((B, L, H, K), torch.float32, dev)
        dk = _empty((B, L, H, K), torch.float32, dev)
        _kernel(_bwd_dqk_kernel, dev)[(NK, NT, B * H)](q, k, v, gc, h, dh, do, dA, dq, dk, float(scale), L, H, K, V,
                                                       NT, BT=BT, BC=BC_SUB, BK=BK, BV=BV, NC=NC, LOWP=lowp,
                                                       PREC=prec, **extra)
        dg = gate_grad(q, k, dq, dk, ht, dht)
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
    if chunk_size is not None and (chunk_size < BC_SUB or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two >= {BC_SUB}, got {chunk_size}")
    for name, bs in (("block_k", block_k), ("block_v", block_v)):
        if bs is not None and (bs < 16 or bs & (bs - 1)):
            raise ValueError(f"{name} must be a power of two >= 16, got {bs}")
    scale = K ** -0.5 if scale is None else float(scale)
    q, k, v, g = (t.contiguous() for t in (q, k, v, g))
    return GLAChunkFunction.apply(q, k, v, g, initial_state, scale, chunk_size, block_k, block_v)
