"""SpikingBrain's adaptive-threshold integer spiking, in pure torch.

SpikingBrain technical report (Pan et al. 2025, Eqs. 19-23): per token, the threshold is
``v_th(x) = mean(|x|) / k`` over the hidden (last) axis; the neuron emits an integer spike
count ``s_int = round(x / v_th)`` (optionally clamped to ``[-max_count, max_count]``) and
the layer sees ``s_int * v_th``. Training uses a straight-through estimator: the backward
pass treats ``round`` as the identity, so ``d(s_int * v_th)/dx = 1``.

At inference a count expands losslessly into a train of S single spikes:

* ``binary``: counts >= 0, ``n`` ones then zeros (needs ``S >= max n``);
* ``ternary``: ``|n|`` entries of ``sign(n)`` (values in {-1, 0, 1});
* ``bitwise``: the bits of ``|n|``, least significant first, each signed by ``sign(n)``
  (needs ``2^S - 1 >= max |n|``); the count is ``sum_s 2^s * train_s``.
"""
from __future__ import annotations

import torch

ENCODINGS = ("binary", "ternary", "bitwise")


def adaptive_threshold(x: torch.Tensor, k: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """``v_th = mean(|x|, -1) / k`` (keepdim, fp32 math, at least ``eps``); shape ``[..., 1]``."""
    return (x.float().abs().mean(-1, keepdim=True) / k).clamp_min(eps)


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, max_count):
        v_th = adaptive_threshold(x, k)
        n = torch.round(x.float() / v_th)
        if max_count is not None:
            n = n.clamp(-max_count, max_count)
        return (n * v_th).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


def adaptive_spike_naive(x: torch.Tensor, k: float = 3.0, max_count: int | None = None) -> torch.Tensor:
    """Quantise ``x [..., D]`` to ``round(x / v_th) * v_th`` with STE backward; same shape and dtype."""
    return _STE.apply(x, k, max_count)


def spike_counts(x: torch.Tensor, k: float = 3.0, max_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer counts and thresholds: ``(s_int [..., D] int32, v_th [..., 1] fp32)``; no gradient."""
    v_th = adaptive_threshold(x, k)
    n = torch.round(x.float() / v_th)
    if max_count is not None:
        n = n.clamp(-max_count, max_count)
    return n.to(torch.int32), v_th


def expand_counts(counts: torch.Tensor, steps: int, encoding: str = "ternary") -> torch.Tensor:
    """Expand integer counts ``[...]`` into a spike train ``[steps, ...]`` (int8), losslessly.

    Raises:
        ValueError: unknown encoding, negative counts for ``binary``, or a count that does not
            fit in ``steps`` steps (the message gives the smallest ``steps`` that fits).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown spike encoding {encoding!r}; accepted: {', '.join(ENCODINGS)}")
    n = counts.to(torch.int64)
    mag = n.abs()
    top = int(mag.max()) if n.numel() else 0
    if encoding == "binary" and (n < 0).any():
        raise ValueError("binary encoding needs non-negative counts; use 'ternary' or 'bitwise' for signed ones")
    if encoding == "bitwise":
        need = max(top.bit_length(), 1)
        if steps < need:
            raise ValueError(f"bitwise encoding of counts up to {top} needs steps >= {need}, got {steps}")
        bits = torch.stack([(mag >> s) & 1 for s in range(steps)])
        return (bits * n.sign()).to(torch.int8)
    if steps < top:
        raise ValueError(f"{encoding} encoding of counts up to {top} needs steps >= {top}, got {steps}")
    s = torch.arange(steps, device=n.device).view(-1, *([1] * n.dim()))
    return ((s < mag).to(torch.int64) * n.sign()).to(torch.int8)


def collapse_train(train: torch.Tensor, encoding: str = "ternary") -> torch.Tensor:
    """Inverse of :func:`expand_counts`: spike train ``[S, ...]`` -> counts ``[...]`` (int32)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown spike encoding {encoding!r}; accepted: {', '.join(ENCODINGS)}")
    t = train.to(torch.int64)
    if encoding == "bitwise":
        w = (2 ** torch.arange(t.shape[0], device=t.device)).view(-1, *([1] * (t.dim() - 1)))
        return (t * w).sum(0).to(torch.int32)
    return t.sum(0).to(torch.int32)


def count_nonzero_spikes(x: torch.Tensor) -> torch.Tensor:
    """Number of nonzero entries of a spike tensor, as an int64 scalar tensor."""
    return torch.count_nonzero(x)
