"""Chunked GLA in torch: the CPU training and prefill path (autograd through every input).

Same values as ``naive.gla_naive`` (formula there; Yang et al. 2024, GLA, Sec. 4), computed
chunk by chunk: inside a chunk of ``C`` tokens with local cumulative log decay
``b_i = sum_{m <= i} g_m`` (from the chunk start) and state ``S`` entering the chunk::

    o_i   = scale * ( (q_i * exp(b_i)) S + sum_{j <= i} (sum_k q_ik k_jk exp(b_ik - b_jk)) v_j )
    S_new = diag(exp(b_C)) S + sum_j (k_j * exp(b_C - b_j))^T v_j

The inter-chunk terms only use ``exp(b_i)`` and ``exp(b_C - b_j)`` (``<= 1`` since ``b`` is
non-increasing for ``g <= 0``). The intra-chunk matrix is a matmul of ``q_i exp(b_i)`` and
``k_j exp(-b_j)`` when every chunk's total decay ``-b_C`` is below ``FAST_MAX_DECAY`` (60, so
``exp(-b_j) < e^60`` cannot overflow float32; with SpikingBrain's gate ``logsigmoid(.)/16``
this needs a mean gate logit below -60 over a chunk); otherwise it is formed pairwise
(``exp(b_i - b_j)``, ``[.., C, C, K]``, memory ``O(B L C K)``), which is stable for any gate.
``C = 32`` by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import gla_init_state


FAST_MAX_DECAY = 60.0


def gla_torch_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
                    initial_state: torch.Tensor | None = None, chunk_size: int = 32, pairwise: bool | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GLA: ``q, k, g [B, L, H, K]``, ``v [B, L, H, V]``, state ``[B, H, K, V]``.

    ``pairwise``: force the pairwise (True) or matmul (False) intra-chunk form; None chooses
    by the decay (module docstring).
    Returns ``(o [B, L, H, V] in v.dtype, final state [B, H, K, V] float32 (float64 for
    float64 input))``; differentiable in ``q, k, v, g`` and the initial state.
    Raises ValueError for ``chunk_size < 1``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    B, L, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = gla_init_state(B, H, K, V, q.device, acc) if initial_state is None else initial_state.to(acc)
    C = min(chunk_size, max(L, 1))
    n = -(-L // C)
    pad = n * C - L
    # [B, H, n, C, *]; padded tail tokens have k = v = q = 0 and g = 0 (no decay): no effect
    q, k, v, g = (F.pad(t.to(acc), (0, 0, 0, 0, 0, pad)).transpose(1, 2).reshape(B, H, n, C, -1)
                  for t in (q, k, v, g))
    b = g.cumsum(3)                                                   # [B, H, n, C, K]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if pairwise is None:
        pairwise = bool((-b[:, :, :, -1]).max() >= FAST_MAX_DECAY) if b.numel() else False
    if pairwise:
        diff = (b[:, :, :, :, None, :] - b[:, :, :, None, :, :])      # b_i - b_j  [.., C(i), C(j), K]
        diff = diff.masked_fill(~causal[:, :, None], float("-inf"))
        A = (q[:, :, :, :, None, :] * k[:, :, :, None, :, :] * torch.exp(diff)).sum(-1)
    else:
        A = (q * torch.exp(b)) @ (k * torch.exp(-b)).transpose(-1, -2)
        A = A.masked_fill(~causal, 0.0)
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
    return o.to(v.dtype), S
