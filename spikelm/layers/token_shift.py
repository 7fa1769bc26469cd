"""Token shift (RWKV): mix each token with the previous one."""
from __future__ import annotations

import torch


def token_shift(x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """Shift ``x [B, L, D]`` one token to the right along L (RWKV's token shift, Peng et al. 2023).

    Position 0 receives ``prev [B, D]`` (the last token of the previous call, for recurrent
    decoding and chunked prefill) or zeros when ``prev`` is None. Returns ``[B, L, D]``.
    """
    first = torch.zeros_like(x[:, :1]) if prev is None else prev[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


def mix(x: torch.Tensor, xx: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """RWKV interpolation ``x * mu + xx * (1 - mu)`` (Peng et al. 2023, RWKV-4) with learned
    per-channel ``mu [D]`` (cast to ``x.dtype``): ``x, xx [B, L, D] -> [B, L, D]``."""
    return torch.lerp(xx, x, mu.to(x.dtype))
