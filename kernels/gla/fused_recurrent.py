"""Triton fused-recurrent gated linear attention (GLA): forward and backward, token by token.

Formula (Yang et al. 2024, GLA, Eq. 3; fla ``fused_recurrent_gla``; statement in ``naive.py``),
per batch row and head, state ``S [K, V]``, log decay ``g_t [K]``::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

Backward (adjoint recursion, reverse time; ``dS`` = gradient of the state after token t)::

    dS_t  = scale * q_t^T do_t + diag(exp(g_{t+1})) dS_{t+1}      (dS_L = d final state)
    dq_t  = scale * S_t do_t^T        dk_t = dS_t v_t^T           dv_t = k_t dS_t
    dS_0  = diag(exp(g_1)) dS_1
    dg_t  = sum_{s >= t} (q_s * dq_s - k_s * dk_s) + rowsum(dS_L * S_L)

(the last line: ``S_t`` and ``o_t`` depend on ``g`` only through ``G_t = sum_{s<=t} g_s``
via ``q_t exp(G_t)``, ``k_s exp(-G_s)`` and ``exp(G_L)`` in the final state; the reverse
cumulative sum runs in torch.)

Layout: ``q, k, g [B, L, H, K]``, ``v, o [B, L, H, V]`` contiguous, states ``[B, H, K, V]``
float32. Program ``(i_v, b*H + h)`` holds the whole key axis (``BK = next_pow2(K)``) and a
block of ``BV`` value channels of the state in registers and walks the sequence; ``dq`` and
``dk`` need a sum over the value axis, so each value block writes its partial sums to a
``[NV, B, L, H, K]`` float32 buffer that torch reduces (deterministic, no atomics). All
arithmetic is float32. This is the decoding path (``L`` small); ``chunk.py`` is the training
path. Kernels are interpreted for CPU tensors (tests) and compiled with ``triton.jit`` for
CUDA tensors (``triton_utils.kernel``); they use Triton builtins and the device functions of
``tiles.py`` only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import triton_utils
from .checks import check_gla_inputs, gate_grad
from .tiles import head_base, load_row, load_state, state_tile

__all__ = ["gla_fused_recurrent"]


@triton_utils.device_function
def _token(k_ptr, g_ptr, v_ptr, qk_base, v_base, t, H, K, V, offs_k, offs_v, mk, mv):
    """``(k_t, g_t, v_t)`` of token ``t`` as float32 (``[BK]``, ``[BK]``, ``[BV]``)."""
    kt = load_row(k_ptr + qk_base, t, H * K, offs_k, mk).to(tl.float32)
    gt = load_row(g_ptr + qk_base, t, H * K, offs_k, mk).to(tl.float32)
    return kt, gt, load_row(v_ptr + v_base, t, H * V, offs_v, mv).to(tl.float32)


def _fwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, h0_ptr, o_ptr, ht_ptr, scale, L, H, K, V,
                BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr):
    i_bh = tl.program_id(1)
    offs_k, offs_v, mk, mv, mkv, tile = state_tile(0, tl.program_id(0), K, V, BK, BV)
    sbase = i_bh.to(tl.int64) * K * V
    S = load_state(h0_ptr + sbase, tile, mkv, HAS_H0, BK, BV)
    qk_base = head_base(i_bh, L, H, K)
    v_base = head_base(i_bh, L, H, V)
    for t in range(0, L):
        qt = load_row(q_ptr + qk_base, t, H * K, offs_k, mk).to(tl.float32)
        kt, gt, vt = _token(k_ptr, g_ptr, v_ptr, qk_base, v_base, t, H, K, V, offs_k, offs_v, mk, mv)
        S = S * tl.exp(gt)[:, None] + kt[:, None] * vt[None, :]
        ot = tl.reduce(S * qt[:, None], 0, tl.standard._sum_combine) * scale
        tl.store(o_ptr + v_base + t * H * V + offs_v, ot.to(o_ptr.dtype.element_ty), mask=mv)
    if STORE_HT:
        tl.store(ht_ptr + sbase + tile, S, mask=mkv)


def _bwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, h0_ptr, do_ptr, dht_ptr, dq_ptr, dk_ptr, dv_ptr, dh0_ptr,
                scale, B, L, H, K, V,
                BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr):
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    offs_k, offs_v, mk, mv, mkv, tile = state_tile(0, i_v, K, V, BK, BV)
    sbase = i_bh.to(tl.int64) * K * V
    qk_base = head_base(i_bh, L, H, K)
    v_base = head_base(i_bh, L, H, V)
    part = i_v.to(tl.int64) * B * L * H * K  # this value block's slice of the partial-sum buffers
    # forward in time: recompute S_t, dq_t (partial over this value block)
    S = load_state(h0_ptr + sbase, tile, mkv, HAS_H0, BK, BV)
    for t in range(0, L):
        kt, gt, vt = _token(k_ptr, g_ptr, v_ptr, qk_base, v_base, t, H, K, V, offs_k, offs_v, mk, mv)
        dot = load_row(do_ptr + v_base, t, H * V, offs_v, mv).to(tl.float32)
        S = S * tl.exp(gt)[:, None] + kt[:, None] * vt[None, :]
        dqt = tl.reduce(S * dot[None, :], 1, tl.standard._sum_combine) * scale
        tl.store(dq_ptr + part + qk_base + t * H * K + offs_k, dqt, mask=mk)
    # reverse in time: dS, dk_t (partial), dv_t (complete: the whole key axis is here)
    dS = load_state(dht_ptr + sbase, tile, mkv, HAS_DHT, BK, BV)
    for i in range(0, L):
        t = L - 1 - i
        qt = load_row(q_ptr + qk_base, t, H * K, offs_k, mk).to(tl.float32)
        kt, gt, vt = _token(k_ptr, g_ptr, v_ptr, qk_base, v_base, t, H, K, V, offs_k, offs_v, mk, mv)
        dot = load_row(do_ptr + v_base, t, H * V, offs_v, mv).to(tl.float32)
        dS = dS + (qt * scale)[:, None] * dot[None, :]
        dkt = tl.reduce(dS * vt[None, :], 1, tl.standard._sum_combine)
        dvt = tl.reduce(dS * kt[:, None], 0, tl.standard._sum_combine)
        tl.store(dk_ptr + part + qk_base + t * H * K + offs_k, dkt, mask=mk)
        tl.store(dv_ptr + v_base + t * H * V + offs_v, dvt.to(dv_ptr.dtype.element_ty), mask=mv)
        dS = dS * tl.exp(gt)[:, None]
    tl.store(dh0_ptr + sbase + tile, dS, mask=mkv)


def _blocks(K: int, V: int, block_v: int | None) -> tuple[int, int]:
    BK = max(triton_utils.next_power_of_2(K), 16)
    if block_v is None:
        # keep the [BK, BV] fp32 state tile within about 16K registers-worth of elements
        block_v = max(16, min(triton_utils.next_power_of_2(V), 16384 // BK, 64))
    return BK, block_v


class GLAFusedRecurrentFunction(torch.autograd.Function):
    """``(q, k, g [B, L, H, K], v [B, L, H, V], h0 [B, H, K, V] | None) -> (o, ht)`` on Triton."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, block_v):
        B, L, H, K = q.shape
        V = v.shape[-1]
        dev = q.device
        BK, BV = _blocks(K, V, block_v)
        o = triton_utils.empty((B, L, H, V), v.dtype, dev)
        ht = triton_utils.empty((B, H, K, V), torch.float32, dev)
        nv = triton.cdiv(V, BV)
        h0c = h0.contiguous() if h0 is not None else ht
        launch = dict(BK=BK, BV=BV, HAS_H0=h0 is not None, STORE_HT=True)
        if dev.type == "cuda":
            launch["num_warps"] = 4
        triton_utils.kernel(_fwd_kernel, dev)[(nv, B * H)](q, k, v, g, h0c, o, ht, float(scale), L, H, K, V, **launch)
        ctx.save_for_backward(q, k, v, g, h0, ht)
        ctx.scale, ctx.block_v = scale, block_v
        ctx.h0_dtype = h0.dtype if h0 is not None else None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, ht = ctx.saved_tensors
        B, L, H, K = q.shape
        V = v.shape[-1]
        dev = q.device
        BK, BV = _blocks(K, V, ctx.block_v)
        nv = triton.cdiv(V, BV)
        do = do.contiguous()
        dq = triton_utils.empty((nv, B, L, H, K), torch.float32, dev)
        dk = triton_utils.empty((nv, B, L, H, K), torch.float32, dev)
        dv = triton_utils.empty((B, L, H, V), v.dtype, dev)
        dh0 = triton_utils.empty((B, H, K, V), torch.float32, dev)
        dhtc = dht.contiguous() if dht is not None else dh0
        launch = dict(BK=BK, BV=BV, HAS_H0=h0 is not None, HAS_DHT=dht is not None)
        if dev.type == "cuda":
            launch["num_warps"] = 4
        triton_utils.kernel(_bwd_kernel, dev)[(nv, B * H)](q, k, v, g, h0 if h0 is not None else dh0, do, dhtc, dq,
                                                           dk, dv, dh0, float(ctx.scale), B, L, H, K, V, **launch)
        dq, dk = dq.sum(0), dk.sum(0)
        dg = gate_grad(q, k, dq, dk, ht, dht)
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g.dtype),
                dh0.to(ctx.h0_dtype) if ctx.h0_dtype is not None else None, None, None)


def gla_fused_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                        scale: float | None = None, initial_state: torch.Tensor | None = None, *,
                        block_v: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GLA on Triton, token by token (formula: module docstring; Yang et al. 2024, GLA).

    Args:
        q, k, g: ``[B, L, H, K]``; v: ``[B, L, H, V]``; one float dtype (float32/float16/
            bfloat16) for q, k, v (g may be any float dtype), on CUDA (compiled) or CPU
            (interpreter, for tests). Non-contiguous inputs are copied.
        scale: multiplies ``q`` (default ``K ** -0.5``).
        initial_state: ``[B, H, K, V]`` (read as float32) or None for zeros.
        block_v: value channels per program (power of two >= 16); None picks one.
    Returns:
        ``(o [B, L, H, V] in v.dtype, final state [B, H, K, V] float32)``, both differentiable
        (in q, k, v, g and the initial state).
    Raises:
        TypeError: non-float inputs. ValueError: shape mismatch, ``L == 0``, devices differ,
        bad ``block_v``.
    """
    B, L, H, K, V = check_gla_inputs(q, k, v, g, initial_state)
    triton_utils.check_power_of_two("block_v", block_v)
    scale = K ** -0.5 if scale is None else float(scale)
    q, k, v, g = (t.contiguous() for t in (q, k, v, g))
    return GLAFusedRecurrentFunction.apply(q, k, v, g, initial_state, scale, block_v)
