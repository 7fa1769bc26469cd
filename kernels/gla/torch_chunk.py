"""Chunked GLA in torch: the CPU training and prefill path (autograd through every input).

Same values as ``naive.gla_naive`` (formula there; Yang et al. 2024, GLA, Sec. 4), computed
chunk by chunk: inside a chunk of ``C`` tokens with local cumulative log decay
``b_i = sum_{m <= i} g_m`` (from the chunk start) and state ``S`` entering the chunk::

    o_i   = scale * ( (q_i * exp(b_i)) S + sum_{j <= i} (sum_k q_ik k_jk exp(b_ik - b_jk)) v_j )
    S_new = diag(exp(b_C)) S + sum_j (k_j * exp(b_C - b_j))^T v_j

The inter-chunk terms only use ``exp(b_i)`` and ``exp(b_C - b_j)`` (``<= 1`` since ``b`` is
non-increasing for ``g <= 0``). The intra-chunk matrix is a matmul of ``q_i exp(b_i)`` and
``k_j exp(-b_j)`` for every chunk whose total decay ``-b_C`` is below ``FAST_MAX_DECAY`` (60,
so ``exp(-b_j) < e^60`` cannot overflow float32); the other chunks (a trained gate can learn
near-complete forgetting in some channels, e.g. ``g = -6`` per token) get the pairwise form
``sum_k q_ik k_jk exp(b_ik - b_jk)`` (``[C, C, K]`` per chunk), stable for any gate. Only
those chunks pay for it. ``C = 32`` by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import promote_inputs


FAST_MAX_DECAY = 60.0


def gla_torch_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
                    initial_state: torch.Tensor | None = None, chunk_size: int = 32, pairwise: bool | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GLA: ``q, k, g [B, L, H, K]``, ``v [B, L, H, V]``, state ``[B, H, K, V]``.

    ``pairwise``: force the pairwise (True) or matmul (False) intra-chunk form for every chunk;
    None chooses per chunk by its decay (module docstring).
    Returns ``(o [B, L, H, V] in v.dtype, final state [B, H, K, V] float32 (float64 for
    float64 input))``; differentiable in ``q, k, v, g`` and the initial state.
    Raises ValueError for ``chunk_size < 1``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = v.dtype
    B, L, H, K = q.shape
    V = v.shape[-1]
    q, k, v, g, scale, S = promote_inputs(q, k, v, g, scale, initial_state)
    C = min(chunk_size, max(L, 1))
    n = -(-L // C)
    pad = n * C - L
    # [B, H, n, C, *]; padded tail tokens have k = v = q = 0 and g = 0 (no decay): no effect
    q, k, v, g = (F.pad(t, (0, 0, 0, 0, 0, pad)).transpose(1, 2).reshape(B, H, n, C, -1)
                  for t in (q, k, v, g))
    b = g.cumsum(3)                                                   # [B, H, n, C, K]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    N = B * H * n
    qf, kf, bf = q.reshape(N, C, -1), k.reshape(N, C, -1), b.reshape(N, C, -1)
    if pairwise is None:
        unsafe = (-bf[:, -1]).amax(-1) >= FAST_MAX_DECAY                 # [N] chunks that would overflow
    else:
        unsafe = torch.full((N,), bool(pairwise), dtype=torch.bool, device=q.device)
    safe_b = torch.where(unsafe[:, None, None], torch.zeros_like(bf), bf)  # no inf, no NaN gradient
    A = (qf * torch.exp(safe_b)) @ (kf * torch.exp(-safe_b)).transpose(-1, -2)
    idx = unsafe.nonzero().squeeze(1)
    if torch.compiler.is_compiling() or idx.numel():  # compiled: no branch on data (an empty idx is a no-op)
        qu, ku, bu = qf[idx], kf[idx], bf[idx]
        diff = (bu[:, :, None, :] - bu[:, None, :, :]).masked_fill(~causal[:, :, None], float("-inf"))
        A = A.index_copy(0, idx, (qu[:, :, None, :] * ku[:, None, :, :] * torch.exp(diff)).sum(-1))
    A = A.masked_fill(~causal, 0.0).reshape(B, H, n, C, C)
    A = A * scale
    intra = A @ v                                                     # [B, H, n, C, V]
    qd = q * torch.exp(b) * scale
    kd = k * torch.exp(b[:, :, :, -1:] - b)
    decay = torch.exp(b[:, :, :, -1])                                 # [B, H, n, K]
    upd = kd.transpose(-1, -2) @ v                                    # [B, H, n, K, V]
    outs = []
    for c in range(n):
        outs.append(qd[:, :, c] @ S)
        S = decay[:, :, c, :, None] * S + upd[:, :, c]
    o = torch.stack(outs, 2) + intra                                  # [B, H, n, C, V]
    o = o.reshape(B, H, n * C, V)[:, :, :L].transpose(1, 2)
    return o.to(out_dtype), S
