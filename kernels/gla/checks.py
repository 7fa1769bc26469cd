"""GLA input checks and the gate gradient, shared by the Triton entry points and ``gla``.

Pure torch (no Triton import), so ``spikelm`` imports where Triton is not installed.
"""
from __future__ import annotations

import torch


def gate_grad(q: torch.Tensor, k: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, ht: torch.Tensor,
              dht: torch.Tensor | None) -> torch.Tensor:
    """Gradient of the log decays ``g [B, L, H, K]`` from ``dq, dk`` (float32) and the final state.

    ``dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s) + rowsum(dS_L * S_L)`` (derivation: ``fused_recurrent`` module docstring); float32.
    """
    d = q.float() * dq - k.float() * dk
    dg = d.flip(1).cumsum(1).flip(1)
    if dht is not None:
        dg = dg + (dht.float() * ht).sum(-1)[:, None]
    return dg


def check_gla_inputs(q, k, v, g, initial_state) -> tuple[int, int, int, int, int]:
    """Validate GLA inputs; return ``(B, L, H, K, V)``. Raises TypeError / ValueError (see callers)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("g", g)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor")
    if q.dim() != 4 or k.shape != q.shape or g.shape != q.shape:
        raise ValueError(f"q, k and g must all be [B, L, H, K], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(g.shape)}")
    B, L, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, L, H):
        raise ValueError(f"v must be [B, L, H, V] = [{B}, {L}, {H}, V], got {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if L == 0:
        raise ValueError("q, k, v, g have an empty sequence axis (L = 0)")
    V = v.shape[-1]
    if K == 0 or V == 0:
        raise ValueError(f"empty key or value dimension (K = {K}, V = {V})")
    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor) or initial_state.shape != (B, H, K, V):
            raise ValueError(f"initial_state must be [B, H, K, V] = [{B}, {H}, {K}, {V}], got "
                             f"{tuple(getattr(initial_state, 'shape', ()))}")
        if not initial_state.is_floating_point():
            raise TypeError("initial_state must be a floating-point tensor")
    devs = {t.device for t in (q, k, v, g, initial_state) if t is not None}
    if len(devs) > 1:
        raise ValueError(f"q, k, v, g and the initial state must be on one device, got {sorted(map(str, devs))}")
    return B, L, H, K, V
