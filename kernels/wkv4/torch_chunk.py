"""Chunked torch WKV for CPU training: parallel inside chunks of ``C`` tokens, a scan across them.

Same values as ``naive.wkv4_naive`` (see its docstring for the formula and the state), but
vectorised over time inside each chunk, so autograd sees ``L / C`` small steps instead of
``L``. For a chunk starting at token ``t0`` with carried state ``(aa, bb, pp)`` and local
index ``a``, the output is a weighted mean over "logits"::

    carry:   pp - a w              with weights [aa, bb]
    j < a:   k_j - (a - 1 - j) w   with weights [v_j, 1]
    j = a:   u + k_a               with weights [v_a, 1]

normalised by their maximum ``m`` (every exponent <= 0; the denominator >= its largest
term), which is the running-max trick of the recurrent form applied to a whole chunk.
Memory is ``O(B * L * C * D)``; ``C = 16`` by default.
"""
from __future__ import annotations

import torch

from .naive import promote_inputs


def _combine(pa, a1, b1, pb, a2, b2):
    """Sum two exponent-normalised accumulators ``e^pa [a1, b1] + e^pb [a2, b2]``."""
    p = torch.maximum(pa, pb)
    e1, e2 = torch.exp(pa - p), torch.exp(pb - p)
    return e1 * a1 + e2 * a2, e1 * b1 + e2 * b2, p


def _chunks(w, u, k, v, aa, bb, pp):
    """WKV over ``n`` whole chunks: ``k, v [B, n, C, D]`` fp32 -> ``(y [B, n, C, D], state)``."""
    B, n, C, D = k.shape
    idx = torch.arange(C, device=k.device, dtype=k.dtype)
    # each chunk alone, summarised at its last token: logits k_j - (C-1-j) w
    end_logit = k - (C - 1 - idx)[:, None] * w  # [B, n, C, D]
    s_p = end_logit.amax(2)
    e = torch.exp(end_logit - s_p[:, :, None])
    s_a, s_b = (e * v).sum(2), e.sum(2)
    # scan: state entering each chunk
    carries = []
    for c in range(n):
        carries.append((aa, bb, pp))
        aa, bb, pp = _combine(pp - C * w, aa, bb, s_p[:, c], s_a[:, c], s_b[:, c])
    c_aa, c_bb, c_pp = (torch.stack(t, 1) for t in zip(*carries))  # [B, n, D]
    # outputs: logits [B, n, a, j, D]
    rel = (idx[:, None] - 1 - idx[None, :])  # a - 1 - j
    intra = k[:, :, None, :, :] - rel[:, :, None] * w
    diag = torch.eye(C, dtype=torch.bool, device=k.device)[:, :, None]
    future = (idx[None, :] > idx[:, None])[:, :, None]
    intra = torch.where(diag, (u + k)[:, :, :, None, :], intra)
    intra = intra.masked_fill(future, float("-inf"))
    carry_logit = c_pp[:, :, None, :] - idx[:, None] * w  # [B, n, C, D]
    m = torch.maximum(intra.amax(3), carry_logit)
    e = torch.exp(intra - m[:, :, :, None, :])
    ec = torch.exp(carry_logit - m)
    num = (e * v[:, :, None, :, :]).sum(3) + ec * c_aa[:, :, None, :]
    den = e.sum(3) + ec * c_bb[:, :, None, :]
    return num / den, (aa, bb, pp)


def wkv4_torch_chunk(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Chunked WKV: ``w, u [D]``, ``k, v [B, L, D]`` -> ``(y [B, L, D] in v.dtype, (aa, bb, pp) [B, D] fp32)``.

    Differentiable with autograd in every input, the initial state included.
    """
    B, L, D = k.shape
    w, u, k32, v32, (aa, bb, pp) = promote_inputs(w, u, k, v, state)
    ys = []
    full = (L // chunk_size) * chunk_size
    for lo, hi, c in ((0, full, chunk_size), (full, L, L - full)):
        if hi == lo:
            continue
        n = (hi - lo) // c
        y, (aa, bb, pp) = _chunks(w, u, k32[:, lo:hi].reshape(B, n, c, D), v32[:, lo:hi].reshape(B, n, c, D), aa, bb, pp)
        ys.append(y.reshape(B, hi - lo, D))
    return torch.cat(ys, 1).to(v.dtype), (aa, bb, pp)
