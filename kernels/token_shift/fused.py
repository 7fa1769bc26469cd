"""Triton token shift + mixes: one read of ``x`` (and of its previous token), ``n`` outputs.

Formula (RWKV-4, Peng et al. 2023; SpikeGPT, Zhu et al. 2023; statement in ``naive.py``), with
``xx[b, t] = x[b, t - 1]`` (``prev[b]`` or 0 at ``t = 0``) and ``n = 1..3`` mix vectors::

    out_i = lerp(xx, x, mu_i)                      (torch.lerp's two-sided form, as naive.py)

Backward, with ``g_i`` the gradient of ``out_i`` (a missing one counts as 0)::

    dx[b, t]  = sum_i mu_i g_i[b, t] + (1 - mu_i) g_i[b, t + 1]     (the second term for t + 1 < L)
    dprev[b]  = sum_i (1 - mu_i) g_i[b, 0]
    dmu_i     = sum_{b, t} g_i[b, t] (x[b, t] - xx[b, t])

Layout: ``x, out_i [B, L, D]`` contiguous; program ``(l, j, b)`` owns the tile of tokens
``[l*LB, (l+1)*LB)`` x channels ``[j*BD, (j+1)*BD)`` of row ``b``; the previous token is the
same tile moved back ``D`` elements (a cache hit on the GPU). All math is float32. ``dmu`` is
reduced deterministically: each program writes its tile's column sums to its own row of a
``[n, P, D]`` float32 buffer (``P`` = programs per channel block) that one torch ``sum``
reduces (no atomics).

Kernels are compiled with ``triton.jit`` for CUDA tensors and run by Triton's interpreter for
CPU tensors (tests), whatever ``TRITON_INTERPRET`` was at import (``triton_utils.kernel``);
they use Triton builtins only (``tl.reduce`` with ``tl.standard._sum_combine`` for sums).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .. import triton_utils
from .checks import check_token_shift_inputs
from .naive import token_shift_mix_naive

__all__ = ["token_shift_mix_fused"]

_CUDA_TILE = (8, 128, 4)  # (tokens LB, channels BD, num_warps) per program on CUDA
_CPU_ELEMENTS = 4096      # elements per program in the interpreter (few, wide programs: fastest there)


# ----------------------------------------------------------------------------------------------
# kernels (plain functions; compiled or interpreted by ``triton_utils.kernel``)
# ----------------------------------------------------------------------------------------------

@triton_utils.device_function
def _tile(x_ptr, prev_ptr, L, D, LB: tl.constexpr, BD: tl.constexpr, HAS_PREV: tl.constexpr):
    """Program ``(l, j, b)``: its token rows, channel columns and masks, the ``[LB, BD]`` offsets,
    and ``x``/``xx`` (the previous token) of the tile in float32."""
    b = tl.program_id(2)
    rows = tl.program_id(0) * LB + tl.arange(0, LB)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    cm = cols < D
    m = (rows[:, None] < L) & cm[None, :]
    off = b.to(tl.int64) * L * D + rows.to(tl.int64)[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    xx = tl.load(x_ptr + off - D, mask=m & (rows[:, None] > 0), other=0.0).to(tl.float32)
    if HAS_PREV:
        pv = tl.load(prev_ptr + b * D + cols, mask=cm, other=0.0).to(tl.float32)
        xx = tl.where(rows[:, None] == 0, pv[None, :] + xx * 0.0, xx)
    return rows, cols, cm, m, off, x, xx


@triton_utils.device_function
def _lerp(xx, x, mu):
    """``torch.lerp(xx, x, mu)`` in its two-sided form (exact at ``mu = 0`` and ``mu = 1``)."""
    diff = x - xx
    return tl.where(mu < 0.5, xx + mu * diff, x - diff * (1.0 - mu))


def _ts_fwd_kernel(x_ptr, prev_ptr, mu0_ptr, mu1_ptr, mu2_ptr, o0_ptr, o1_ptr, o2_ptr, L, D,
                   LB: tl.constexpr, BD: tl.constexpr, N_MU: tl.constexpr, HAS_PREV: tl.constexpr):
    _, cols, cm, m, off, x, xx = _tile(x_ptr, prev_ptr, L, D, LB, BD, HAS_PREV)
    mu = tl.load(mu0_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    tl.store(o0_ptr + off, _lerp(xx, x, mu).to(o0_ptr.dtype.element_ty), mask=m)
    if N_MU > 1:
        mu = tl.load(mu1_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        tl.store(o1_ptr + off, _lerp(xx, x, mu).to(o1_ptr.dtype.element_ty), mask=m)
    if N_MU > 2:
        mu = tl.load(mu2_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        tl.store(o2_ptr + off, _lerp(xx, x, mu).to(o2_ptr.dtype.element_ty), mask=m)


@triton_utils.device_function
def _mix_grad(mu_ptr, g_ptr, dmu_ptr, dx, dp, rows, cols, cm, m, off, diff, L, D, slot,
              NEED_DMU: tl.constexpr):
    """Add one mix's terms to ``dx`` (tile) and ``dp`` (``dprev`` row); write its ``dmu`` partial sums."""
    mu = tl.load(mu_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
    gn = tl.load(g_ptr + off + D, mask=m & (rows[:, None] + 1 < L), other=0.0).to(tl.float32)
    dx += mu * g + (1.0 - mu) * gn
    dp += tl.reduce(tl.where(rows[:, None] == 0, (1.0 - mu) * g, 0.0), 0, tl.standard._sum_combine)
    if NEED_DMU:
        tl.store(dmu_ptr + slot + cols, tl.reduce(g * diff, 0, tl.standard._sum_combine), mask=cm)
    return dx, dp


def _ts_bwd_kernel(x_ptr, prev_ptr, mu0_ptr, mu1_ptr, mu2_ptr, g0_ptr, g1_ptr, g2_ptr, dx_ptr, dprev_ptr, dmu_ptr,
                   L, D, P,
                   LB: tl.constexpr, BD: tl.constexpr, HAS_PREV: tl.constexpr, HAS_G0: tl.constexpr,
                   HAS_G1: tl.constexpr, HAS_G2: tl.constexpr, NEED_DX: tl.constexpr, NEED_DPREV: tl.constexpr,
                   NEED_DMU: tl.constexpr):
    rows, cols, cm, m, off, x, xx = _tile(x_ptr, prev_ptr, L, D, LB, BD, HAS_PREV)
    diff = x - xx
    dx = x * 0.0
    dp = tl.reduce(dx, 0, tl.standard._sum_combine)
    # this program's row of the [n, P, D] partial sums of dmu
    slot = (tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)).to(tl.int64) * D
    if HAS_G0:
        dx, dp = _mix_grad(mu0_ptr, g0_ptr, dmu_ptr, dx, dp, rows, cols, cm, m, off, diff, L, D, slot, NEED_DMU)
    if HAS_G1:
        dx, dp = _mix_grad(mu1_ptr, g1_ptr, dmu_ptr, dx, dp, rows, cols, cm, m, off, diff, L, D, slot + P * D,
                           NEED_DMU)
    if HAS_G2:
        dx, dp = _mix_grad(mu2_ptr, g2_ptr, dmu_ptr, dx, dp, rows, cols, cm, m, off, diff, L, D,
                           slot + 2 * P * D, NEED_DMU)
    if NEED_DX:
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=m)
    if NEED_DPREV:
        tl.store(dprev_ptr + tl.program_id(2) * D + cols, dp.to(dprev_ptr.dtype.element_ty),
                 mask=cm & ((cols * 0 + tl.program_id(0)) == 0))


# ----------------------------------------------------------------------------------------------
# launch
# ----------------------------------------------------------------------------------------------

def _tiles(L: int, D: int, device: torch.device, block_size: int | None) -> tuple[int, int, int]:
    """``(LB, BD, num_warps)``: the tile of one program (``block_size`` fixes ``BD``)."""
    if device.type == "cuda":
        lb, bd, warps = _CUDA_TILE
        bd = block_size or min(bd, triton_utils.default_block(D, bd))
        return min(lb, triton_utils.next_power_of_2(L)), bd, warps
    bd = block_size or triton_utils.default_block(D, _CPU_ELEMENTS)
    return min(triton_utils.next_power_of_2(L), max(1, _CPU_ELEMENTS // bd)), bd, 4


def _launch(fn, B, L, D, device, block_size, args, consts):
    lb, bd, warps = _tiles(L, D, device, block_size)
    grid = (triton.cdiv(L, lb), triton.cdiv(D, bd), B)
    extra = {} if device.type == "cpu" else {"num_warps": warps}
    triton_utils.kernel(fn, device)[grid](*args, LB=lb, BD=bd, **consts, **extra)
    return grid


class TokenShiftMixFunction(torch.autograd.Function):
    """``(x [B, L, D], prev [B, D] | None, block_size, *mus [D]) -> n tensors [B, L, D] in x.dtype``."""

    @staticmethod
    def forward(ctx, x, prev, block_size, *mus):
        B, L, D = x.shape
        n = len(mus)
        outs = [triton_utils.empty((B, L, D), x.dtype, x.device) for _ in range(n)]
        mp = list(mus) + [mus[0]] * (3 - n)
        op = outs + [outs[0]] * (3 - n)
        _launch(_ts_fwd_kernel, B, L, D, x.device, block_size,
                (x, prev if prev is not None else x, *mp, *op, L, D), {"N_MU": n, "HAS_PREV": prev is not None})
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, prev, *mus)
        ctx.block_size = block_size
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        x, prev, *mus = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dprev, dmus = token_shift_mix_backward(x, prev, mus, grads, ctx.block_size, need[0], need[1], need[3:])
        return (dx, dprev, None, *dmus)


def token_shift_mix_backward(x, prev, mus, grads, block_size, need_dx, need_dprev, need_dmus):
    """The backward kernel: ``x [B, L, D]``, ``prev [B, D] | None``, ``mus`` ``n`` x ``[D]``, ``grads``
    ``n`` x (``[B, L, D]`` or None: that mix was unused) -> ``(dx, dprev, dmus)``, each None unless
    asked for (``need_dx``, ``need_dprev`` with a ``prev``, ``need_dmus[i]``; a list of ``n``).
    The ``dmus`` are rows of one reduction (views of one tensor)."""
    B, L, D = x.shape
    n = len(mus)
    dev = x.device
    need_dprev = prev is not None and need_dprev
    need_dmu = any(need_dmus)
    has = [g is not None for g in grads]
    if not any(has):
        return None, None, [None] * n
    gs = [g.contiguous() if g is not None else x for g in grads] + [x] * (3 - n)
    mp = list(mus) + [mus[0]] * (3 - n)
    lb, _, _ = _tiles(L, D, dev, block_size)
    P = B * triton.cdiv(L, lb)
    dx = triton_utils.empty((B, L, D), x.dtype, dev) if need_dx else x
    dprev = triton_utils.empty((B, D), prev.dtype, dev) if need_dprev else x
    part = triton_utils.empty((n, P, D), torch.float32, dev) if need_dmu else x
    _launch(_ts_bwd_kernel, B, L, D, dev, block_size,
            (x, prev if prev is not None else x, *mp, *gs, dx, dprev, part, L, D, P),
            {"HAS_PREV": prev is not None, "HAS_G0": has[0], "HAS_G1": n > 1 and has[1],
             "HAS_G2": n > 2 and has[2], "NEED_DX": need_dx, "NEED_DPREV": need_dprev, "NEED_DMU": need_dmu})
    dmus = [None] * n
    if need_dmu:
        sums = part[:, 0] if P == 1 else part.sum(1)
        dmus = [sums[i].to(mu.dtype) if has[i] and need_dmus[i] else None for i, mu in enumerate(mus)]
    return (dx if need_dx else None), (dprev if need_dprev else None), dmus


def token_shift_mix_fused(x: torch.Tensor, prev: torch.Tensor | None, mus: Sequence[torch.Tensor], *,
                          block_size: int | None = None) -> tuple[torch.Tensor, ...]:
    """Token shift + ``n`` RWKV mixes on Triton (formula and gradients: module docstring; RWKV-4).

    Args:
        x: ``[B, L, D]`` float32/float16/bfloat16 on CUDA (compiled kernel) or CPU (Triton
            interpreter; float32/float16, for tests). float64 and empty inputs are routed to
            ``naive.token_shift_mix_naive`` (gradcheck). Non-contiguous input is copied.
        prev: ``[B, D]`` (any float dtype, read as float32) or None for zeros.
        mus: 1 to 3 ``[D]`` mix vectors (any float dtype, read as float32).
        block_size: channels per program (power of two >= 16); None picks one. A testing knob.
    Returns:
        one ``[B, L, D]`` tensor in ``x.dtype`` per ``mu``, differentiable in ``x``, ``prev`` and
        every ``mu`` (one backward kernel for all of them, plus one ``sum`` for the ``dmu``).
    Raises:
        TypeError, ValueError: as ``checks.check_token_shift_inputs``; a bad ``block_size``.
    """
    check_token_shift_inputs(x, prev, mus)
    triton_utils.check_power_of_two("block_size", block_size)
    if x.dtype == torch.float64 or x.numel() == 0:
        return token_shift_mix_naive(x, prev, mus)
    x = x.contiguous()
    prev = prev.contiguous() if prev is not None else None
    return TokenShiftMixFunction.apply(x, prev, block_size, *(mu.contiguous() for mu in mus))
