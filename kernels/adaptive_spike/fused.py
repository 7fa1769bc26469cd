"""Triton adaptive-threshold integer spiking (SpikingBrain) and a fused spike counter.

Formula (SpikingBrain technical report, Pan et al. 2025, Eqs. 19-23; statement in
``naive.py``), per row ``x [D]`` (a token's hidden vector)::

    v_th  = max(sum_d |x_d| / D / k, eps)          (eps = 1e-6, as ``naive.adaptive_threshold``)
    n_d   = round_half_even(x_d / v_th), clamped to [-max_count, max_count] when given
    out_d = n_d * v_th                             (in x.dtype; math in float32)

Backward is straight-through: ``d out / d x = 1``, so the gradient is passed unchanged and no
kernel runs. One program owns one row: with ``D <= 4096`` the row stays in registers (one
read, one write); longer rows are read twice in tiles of 4096 (sum, then quantise).
Division is IEEE round-to-nearest (``div_rn``) and rounding uses the ``1.5 * 2^23`` trick,
which rounds half to even like ``torch.round`` for ``|x / v_th| < 2^22`` (the count is at
most ``k * D``, so this holds for any realistic row).

:func:`spike_counts_fused` returns the integer counts and thresholds from the same kernel
(for the inference-time spike-train expansion), and :func:`spike_count_fused` counts nonzero
entries: each program writes the count of its
block to its own slot, and torch sums the slots in int64 (deterministic, no atomics).

Kernels are compiled with ``triton.jit`` for CUDA tensors and run by Triton's interpreter for
CPU tensors (tests), whatever ``TRITON_INTERPRET`` was when triton was imported
(``triton_utils.kernel``); they use Triton builtins and ``triton_utils.device_function``
helpers only.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import triton_utils
from .checks import check_adaptive_inputs

__all__ = ["adaptive_spike_fused", "spike_counts_fused", "spike_count_fused"]

_MAX_ROW_BLOCK = 4096
_COUNT_BLOCK = 4096
_EPS = 1e-6  # naive.adaptive_threshold's default


def _adaptive_spike_kernel(x_ptr, y_ptr, n_ptr, vth_ptr, D, D_f, k, eps, max_count,
                           BLOCK: tl.constexpr, SINGLE: tl.constexpr, CLAMP: tl.constexpr, COUNTS: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * D
    offs = tl.arange(0, BLOCK)
    if SINGLE:
        m = offs < D
        x = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        total = tl.reduce(tl.abs(x), 0, tl.standard._sum_combine)
    else:
        acc = tl.full([BLOCK], 0.0, tl.float32)
        for start in range(0, D, BLOCK):
            mm = (offs + start) < D
            acc += tl.abs(tl.load(x_ptr + base + start + offs, mask=mm, other=0.0).to(tl.float32))
        total = tl.reduce(acc, 0, tl.standard._sum_combine)
    v_th = tl.maximum(tl.math.div_rn(tl.math.div_rn(total, D_f), k), eps)
    if COUNTS:
        tl.store(vth_ptr + row, v_th)
    if SINGLE:
        yv = tl.math.div_rn(x, v_th)
        r = (yv + 12582912.0) - 12582912.0  # round half to even (|yv| < 2^22)
        r = tl.where(tl.abs(yv) < 4194304.0, r, yv)
        if CLAMP:
            r = tl.minimum(tl.maximum(r, -max_count), max_count)
        if COUNTS:
            tl.store(n_ptr + base + offs, r.to(tl.int32), mask=m)
        else:
            tl.store(y_ptr + base + offs, (r * v_th).to(y_ptr.dtype.element_ty), mask=m)
    else:
        for start in range(0, D, BLOCK):
            mm = (offs + start) < D
            xs = tl.load(x_ptr + base + start + offs, mask=mm, other=0.0).to(tl.float32)
            yv = tl.math.div_rn(xs, v_th)
            r = (yv + 12582912.0) - 12582912.0
            r = tl.where(tl.abs(yv) < 4194304.0, r, yv)
            if CLAMP:
                r = tl.minimum(tl.maximum(r, -max_count), max_count)
            if COUNTS:
                tl.store(n_ptr + base + start + offs, r.to(tl.int32), mask=mm)
            else:
                tl.store(y_ptr + base + start + offs, (r * v_th).to(y_ptr.dtype.element_ty), mask=mm)


def _count_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0)
    nz = tl.where(m & (x != 0), 1, 0)
    tl.store(out_ptr + pid, tl.reduce(nz, 0, tl.standard._sum_combine))


def _run_rows(x: torch.Tensor, k: float, max_count: int | None, block_size: int | None, counts: bool):
    """Launch the row kernel: ``counts=False`` -> quantised ``x``; True -> (int32 counts, fp32 v_th)."""
    D = x.shape[-1]
    x2 = x.reshape(-1, D).contiguous()
    R = x2.shape[0]
    if counts:
        n = triton_utils.empty((R, D), torch.int32, x.device)
        vth = triton_utils.empty((R, 1), torch.float32, x.device)
        y = n
    else:
        y = triton_utils.empty((R, D), x.dtype, x.device)
        n = vth = y  # never touched (COUNTS=False)
    if R > 0:
        block = block_size or triton_utils.default_block(D, _MAX_ROW_BLOCK)
        launch = dict(BLOCK=block, SINGLE=D <= block, CLAMP=max_count is not None, COUNTS=counts)
        if x.is_cuda:
            launch["num_warps"] = max(1, min(16, block // 256))
        triton_utils.kernel(_adaptive_spike_kernel, x.device)[(R,)](
            x2, y, n, vth, D, float(D), float(k), _EPS, float(max_count) if max_count is not None else 0.0, **launch)
    if counts:
        return n.reshape(x.shape), vth.reshape(*x.shape[:-1], 1)
    return y.reshape(x.shape)


def _quantise(x: torch.Tensor, k: float, max_count: int | None, block_size: int | None) -> torch.Tensor:
    return _run_rows(x, k, max_count, block_size, counts=False)


class AdaptiveSpikeFusedFunction(torch.autograd.Function):
    """``x [..., D] -> round(x / v_th) * v_th`` on Triton; straight-through backward."""

    @staticmethod
    def forward(ctx, x, k, max_count, block_size):
        return _quantise(x, k, max_count, block_size)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None


def adaptive_spike_fused(x: torch.Tensor, k: float = 3.0, max_count: int | None = None, *,
                         block_size: int | None = None) -> torch.Tensor:
    """SpikingBrain adaptive spiking on Triton: ``round(x / v_th) * v_th``, ``v_th = mean|x| / k`` per row.

    Formula: module docstring (SpikingBrain report, Eqs. 19-23), equal to
    ``naive.adaptive_spike_naive`` up to the summation order of ``mean|x|``.

    Args:
        x: ``[..., D]`` activations, float32/float16/bfloat16 (float64 is computed in
            float32), on CUDA (compiled kernel) or CPU (Triton interpreter, for tests); any
            strides (copied to contiguous rows).
        k: threshold divisor > 0 (SpikingBrain: 3).
        max_count: clamp of the integer count to ``[-max_count, max_count]``, or None.
        block_size: tile width along ``D`` (power of two >= 16; rows longer than it take
            two passes). None: ``next_power_of_2(D)`` up to 4096. A tuning/testing knob.
    Returns:
        Tensor of ``x``'s shape and dtype; backward is the identity (straight-through).
    Raises:
        TypeError: ``x`` not a float32/float16/bfloat16/float64 tensor.
        ValueError: ``k <= 0`` or not finite, ``max_count < 1``, empty last axis, bad ``block_size``.
    """
    _check(x, k, max_count, block_size)
    return AdaptiveSpikeFusedFunction.apply(x, k, max_count, block_size)


def _check(x, k, max_count, block_size) -> None:
    """``checks.check_adaptive_inputs``, plus a finite ``k`` and a power-of-two ``block_size``."""
    check_adaptive_inputs(x, k, max_count)
    if not math.isfinite(k):
        raise ValueError(f"adaptive spiking k must be a finite number > 0, got {k}")
    triton_utils.check_power_of_two("block_size", block_size)


def spike_counts_fused(x: torch.Tensor, k: float = 3.0, max_count: int | None = None, *,
                       block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer spike counts and thresholds on Triton: ``(s_int [..., D] int32, v_th [..., 1] float32)``.

    The Triton counterpart of ``naive.spike_counts`` (SpikingBrain report, Eqs. 19-23), from
    the same kernel as :func:`adaptive_spike_fused`, so ``(s_int.float() * v_th).to(x.dtype)``
    equals ``adaptive_spike_fused(x, k, max_count)`` bit for bit. (``naive.spike_counts`` may
    differ in the last bit of ``v_th``, the summation order of ``mean|x|``, and then by one
    count at an exact rounding tie.) Use it for the inference-time expansion into spike
    trains whenever the training-time path runs on Triton. No gradient.

    Args:
        x: ``[..., D]`` float32/float16/bfloat16 activations on CUDA or CPU (interpreter).
        k, max_count, block_size: as :func:`adaptive_spike_fused`.
    Raises:
        TypeError: ``x`` not a float32/float16/bfloat16/float64 tensor.
        ValueError: ``k <= 0`` or not finite, ``max_count < 1``, empty last axis, bad ``block_size``.
    """
    _check(x, k, max_count, block_size)
    return _run_rows(x.detach(), k, max_count, block_size, counts=True)


def spike_count_fused(x: torch.Tensor, *, block_size: int = _COUNT_BLOCK) -> torch.Tensor:
    """Number of nonzero entries of ``x`` (spikes, spike trains, counts), as an int64 0-dim tensor.

    Same value as ``naive.count_nonzero_spikes`` / ``torch.count_nonzero``; computed in one
    read of ``x`` with per-block int32 counts summed by torch in int64 (deterministic).

    Args:
        x: any shape and dtype (float, int or bool), on CUDA or CPU (interpreter).
        block_size: elements per program (power of two >= 16).
    Raises:
        TypeError: ``x`` not a tensor. ValueError: bad ``block_size``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    triton_utils.check_power_of_two("block_size", block_size)
    flat = x.detach().reshape(-1).contiguous()
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    n = flat.numel()
    if n == 0:
        return torch.zeros((), dtype=torch.int64, device=x.device)
    grid = triton.cdiv(n, block_size)
    part = triton_utils.empty((grid,), torch.int32, x.device)
    triton_utils.kernel(_count_kernel, x.device)[(grid,)](flat, part, n, BLOCK=block_size)
    return part.sum(dtype=torch.int64)
