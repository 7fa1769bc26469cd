"""Pure-torch RWKV-4 WKV recurrence, token by token: the statement of the formula.

For each channel (Peng et al. 2023, RWKV-4; SpikeGPT ``src/model.py`` uses the same op)::

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
            / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})

with decay ``w > 0`` and bonus ``u``. The state after token ``t`` is kept as
``(aa, bb, pp)`` with ``sum_{i<=t} e^{-(t-i) w + k_i} [v_i, 1] = e^{pp} [aa, bb]``: ``pp`` is
the running maximum exponent, which keeps every ``exp`` argument <= 0 for any length.
The empty state is ``aa = bb = 0, pp = -1e38``.
"""
from __future__ import annotations

import torch

EMPTY_PP = -1e38


def wkv4_init_state(batch: int, channels: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The empty WKV state ``(aa, bb, pp)``, each ``[batch, channels]`` float32."""
    aa = torch.zeros(batch, channels, device=device, dtype=torch.float32)
    return aa, aa.clone(), torch.full_like(aa, EMPTY_PP)


def promote_inputs(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state=None):
    """``(w, u, k, v, (aa, bb, pp))`` in the math dtype: float64 for float64 ``v``, else float32.

    A None ``state`` becomes the empty state ``wkv4_init_state(B, D)``; shapes are unchanged.
    Shared by the torch implementations (``naive``, ``torch_chunk``).
    """
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    if state is None:
        state = wkv4_init_state(k.shape[0], k.shape[2], k.device)
    return w.to(acc), u.to(acc), k.to(acc), v.to(acc), tuple(s.to(acc) for s in state)


def wkv4_naive(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Sequential WKV: ``w, u [D]``, ``k, v [B, L, D]`` -> ``(y [B, L, D] in v.dtype, (aa, bb, pp) [B, D])``.

    Math in float32 (float64 for float64 input). Slow (one step per token); used by tests and
    as the single-token decoding step.
    """
    w, u, k32, v32, (aa, bb, pp) = promote_inputs(w, u, k, v, state)
    ys = []
    for t in range(k.shape[1]):
        kt, vt = k32[:, t], v32[:, t]
        ww = u + kt
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        ys.append((e1 * aa + e2 * vt) / (e1 * bb + e2))
        ww = pp - w
        p = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - p), torch.exp(kt - p)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, p
    return torch.stack(ys, 1).to(v.dtype), (aa, bb, pp)
