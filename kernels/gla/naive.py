"""Pure-torch gated linear attention (GLA), token by token: the statement of the formula.

Gated linear attention (Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training", Eq. 3; fla ``fused_recurrent_gla`` convention), per batch row
and head, with a matrix state ``S [K, V]`` and a per-key-channel log decay ``g_t <= 0``::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t          (k_t [1, K], v_t [1, V])
    o_t = scale * q_t S_t                             (q_t [1, K], o_t [1, V])

SpikingBrain-7B's linear-attention layers use exactly this recurrence with ``g`` from a
low-rank log-sigmoid gate (see ``spikelm/layers/gla.py``). Tensors follow fla's layout:
``q, k, g [B, L, H, K]``, ``v [B, L, H, V]``, state ``[B, H, K, V]`` (float32).
"""
from __future__ import annotations

import torch


def gla_init_state(batch: int, heads: int, key_dim: int, value_dim: int, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The empty GLA state: zeros ``[batch, heads, key_dim, value_dim]`` (float32 by default)."""
    return torch.zeros(batch, heads, key_dim, value_dim, device=device, dtype=dtype)


def promote_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None,
                   initial_state: torch.Tensor | None):
    """``(q, k, v, g, scale, S0)`` in the math dtype (float64 for float64 ``v``, else float32).

    ``scale`` defaults to ``K ** -0.5``; a None ``initial_state`` becomes zeros ``[B, H, K, V]``.
    Shared by the torch implementations (``naive``, ``torch_chunk``).
    """
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    B, _, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = gla_init_state(B, H, K, V, q.device, acc) if initial_state is None else initial_state.to(acc)
    return q.to(acc), k.to(acc), v.to(acc), g.to(acc), scale, S


def gla_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
              initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential GLA (formula: module docstring).

    Args:
        q, k: ``[B, L, H, K]``; v: ``[B, L, H, V]``; g: ``[B, L, H, K]`` log decays (<= 0 for a
            contraction, not enforced); any float dtype, math in float32 (float64 for float64).
        scale: multiplies ``q`` (default ``K ** -0.5``).
        initial_state: ``[B, H, K, V]`` or None (zeros).
    Returns:
        ``(o [B, L, H, V] in v.dtype, final state [B, H, K, V] in the math dtype)``.
        Differentiable with autograd in every input (slow: one step per token).
    """
    out_dtype = v.dtype
    B, L, H, K = q.shape
    V = v.shape[-1]
    q, k, v, g, scale, S = promote_inputs(q, k, v, g, scale, initial_state)
    outs = []
    for t in range(L):
        S = S * torch.exp(g[:, t])[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, H, V)
    return o.to(out_dtype), S
