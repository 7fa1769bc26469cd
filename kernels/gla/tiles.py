"""Triton device functions shared by the GLA kernels (``chunk.py``, ``fused_recurrent.py``).

Layout (fla's): ``q, k, g [B, L, H, K]``, ``v, o [B, L, H, V]`` contiguous, states
``[B, H, K, V]`` float32; programs own the row ``(b, h) = divmod(i_bh, H)``. Every function
is a ``triton_utils.device_function``: inlined in compiled kernels, interpreted on CPU. All
loads return zeros outside their mask.
"""
from __future__ import annotations

import triton.language as tl

from ..triton_utils import device_function

__all__ = ["span", "head_base", "state_tile", "load_state", "load_row", "load_rows", "dot"]


@device_function
def span(i, BLOCK: tl.constexpr, n):
    """Offsets ``i * BLOCK + [0, BLOCK)`` of block ``i`` and their mask ``< n``."""
    offs = i * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@device_function
def head_base(i_bh, L, H, D):
    """64-bit offset of token 0 of row ``(b, h)`` in a ``[B, L, H, D]`` tensor."""
    b = i_bh // H
    h = i_bh % H
    return (b.to(tl.int64) * L * H + h) * D


@device_function
def state_tile(i_k, i_v, K, V, BK: tl.constexpr, BV: tl.constexpr):
    """Key block ``i_k`` and value block ``i_v`` of a ``[K, V]`` state: ``(ok, ov, mk, mv, mkv, tile)``,
    with ``tile`` the ``[BK, BV]`` offsets inside one state and ``mkv`` their mask."""
    ok, mk = span(i_k, BK, K)
    ov, mv = span(i_v, BV, V)
    return ok, ov, mk, mv, mk[:, None] & mv[None, :], ok[:, None] * V + ov[None, :]


@device_function
def load_state(ptr, tile, mask, HAS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """The ``[BK, BV]`` state tile at ``ptr + tile`` as float32 when ``HAS``, else zeros."""
    if HAS:
        S = tl.load(ptr + tile, mask=mask, other=0.0).to(tl.float32)
    else:
        S = tl.full([BK, BV], 0.0, tl.float32)
    return S


@device_function
def load_row(ptr, t, stride, cols, mask):
    """Row ``t`` (``ptr[t * stride + cols]``) in its stored dtype."""
    return tl.load(ptr + t * stride + cols, mask=mask, other=0.0)


@device_function
def load_rows(ptr, rows, cols, stride, mask):
    """The tile ``ptr[rows * stride + cols]`` (``[len(rows), len(cols)]``) in its stored dtype."""
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0)


@device_function
def dot(a, b, ref_ptr, LOWP: tl.constexpr, PREC: tl.constexpr, TRANS_A: tl.constexpr = False,
        TRANS_B: tl.constexpr = False):
    """``tl.dot`` (float32 accumulation, ``input_precision=PREC``) of ``a`` and ``b``, each cast to
    ``ref_ptr``'s element type when ``LOWP`` (tensor cores for fp16/bf16 inputs), else to float32,
    then transposed where asked."""
    if LOWP:
        a = a.to(ref_ptr.dtype.element_ty)
        b = b.to(ref_ptr.dtype.element_ty)
    else:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if TRANS_A:
        a = tl.trans(a)
    if TRANS_B:
        b = tl.trans(b)
    return tl.dot(a, b, input_precision=PREC)
