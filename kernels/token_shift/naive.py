"""Pure-torch token shift + mixes: the statement of the formula (and the CPU training path).

RWKV's token shift (Peng et al. 2023, RWKV-4; SpikeGPT, Zhu et al. 2023, ``src/model.py``):
``xx[:, t] = x[:, t - 1]`` (``prev`` or zeros at ``t = 0``), then for each learned per-channel
mix vector ``mu_i [D]``::

    out_i = lerp(xx, x, mu_i) = x * mu_i + xx * (1 - mu_i)

exactly as ``spikelm.layers.token_shift`` computes it (``torch.cat`` + ``torch.lerp``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def token_shift_naive(x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """``x [B, L, D]`` shifted one token right along L: position 0 gets ``prev [B, D]`` (cast to
    ``x.dtype``) or zeros when ``prev`` is None. Returns ``[B, L, D]`` in ``x.dtype``."""
    first = torch.zeros_like(x[:, :1]) if prev is None else prev[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


def token_shift_mix_naive(x: torch.Tensor, prev: torch.Tensor | None, mus: Sequence[torch.Tensor]
                          ) -> tuple[torch.Tensor, ...]:
    """Token shift + one RWKV mix per ``mu`` (formula: module docstring; RWKV-4, Peng et al. 2023).

    Args:
        x: ``[B, L, D]`` activations, any float dtype (the math runs in it).
        prev: ``[B, D]`` last token of the previous call, or None (zeros).
        mus: ``[D]`` mix vectors (any float dtype, cast to ``x.dtype``).
    Returns:
        one ``[B, L, D]`` tensor in ``x.dtype`` per ``mu``, differentiable with autograd.
    Raises:
        nothing of its own (this is the reference; see ``checks.check_token_shift_inputs``).
    """
    xx = token_shift_naive(x, prev)
    return tuple(torch.lerp(xx, x, mu.to(x.dtype)) for mu in mus)
