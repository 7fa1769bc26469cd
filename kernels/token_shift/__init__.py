"""Token shift fused with the RWKV mixes: ``token_shift_mix`` (one read of ``x``, 1..3 outputs).

RWKV-4 (Peng et al. 2023) and SpikeGPT (Zhu et al. 2023) mix each token with the previous one
through learned per-channel vectors (time-mix: ``mu_k, mu_v, mu_r``; channel-mix: ``mu_k,
mu_r``). Unfused that is a ``cat`` (the shift), a ``zeros`` and one ``lerp`` per mix forward,
and as many again backward; the Triton kernel of ``fused.py`` does the forward in one launch and
the backward (``dx``, ``dprev``, every ``dmu``) in one launch plus one ``sum``.

Dispatch (``spikelm.kernels.dispatch``): the Triton kernel where
:func:`~spikelm.kernels.dispatch.use_triton` says so (CUDA tensors, and CPU tensors under
``TRITON_INTERPRET=1``, unless the backend is ``"torch"``) and ``fused.py`` imports, else the
torch path ``naive.token_shift_mix_naive`` (``torch.cat`` + ``torch.lerp``: the CPU training
path, also the reference). Under ``torch.compile`` the Triton path runs as the custom op
``spikelm::token_shift_mix`` (``spikelm.kernels.custom_op``); the torch path is traced.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..custom_op import opaque_op
from ..dispatch import use_triton
from .checks import MAX_MIXES, check_token_shift_inputs
from .naive import token_shift_mix_naive, token_shift_naive

__all__ = ["MAX_MIXES", "token_shift_mix", "token_shift_mix_naive", "token_shift_naive"]


def _triton_impl():
    try:
        from .fused import token_shift_mix_fused
    except ImportError:
        return None
    return token_shift_mix_fused


def token_shift_mix(x: torch.Tensor, prev: torch.Tensor | None, mus: Sequence[torch.Tensor], *,
                    backend: str | None = None) -> tuple[torch.Tensor, ...]:
    """RWKV token shift and one mix per ``mu``: ``out_i = lerp(shift(x, prev), x, mu_i)``
    (RWKV-4, Peng et al. 2023; SpikeGPT, Zhu et al. 2023; formula in ``naive.py``).

    Args:
        x: ``[B, L, D]`` activations, fp32/fp16/bf16 (fp64 for gradcheck).
        prev: ``[B, D]`` the previous call's last token (recurrent decoding, chunked prefill), or
            None for zeros.
        mus: a tuple/list of 1 to 3 ``[D]`` mix vectors (any float dtype; cast to ``x.dtype`` on
            the torch path, read as float32 by the kernel).
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or None for the current setting
            (``spikelm.kernels.dispatch``). float64 and empty inputs use the torch path.
    Returns:
        a tuple of ``len(mus)`` tensors ``[B, L, D]`` in ``x.dtype``, differentiable in ``x``,
        ``prev`` and the ``mus``.
    Raises:
        TypeError: non-float tensors, ``mus`` not a sequence.
        ValueError: shape mismatch (``x`` not ``[B, L, D]`` with ``L > 0``, ``prev`` not ``[B, D]``,
            a ``mu`` not ``[D]``), not 1..3 mixes, tensors on different devices, an unknown ``backend``.
        TritonUnavailableError: ``backend="triton"`` where Triton cannot run (not installed, a
            CPU tensor without ``TRITON_INTERPRET=1``).
    """
    check_token_shift_inputs(x, prev, mus)
    mus = tuple(mus)
    if use_triton(x, backend) and x.dtype != torch.float64 and x.numel() > 0:
        impl = _triton_impl()
        if impl is not None:
            return _TS_OP(x, prev, *mus) if torch.compiler.is_compiling() else impl(x, prev, mus)
    return token_shift_mix_naive(x, prev, mus)


def _op_backward(args, saved, grads, needs):
    """``spikelm::token_shift_mix``'s backward: the backward kernel on the inputs (the forward
    saves nothing else), no second forward."""
    from .fused import token_shift_mix_backward

    x, prev, *mus = args  # contiguous, as token_shift_mix_fused made them for the forward kernel
    x, prev, mus = x.contiguous(), None if prev is None else prev.contiguous(), [mu.contiguous() for mu in mus]
    dx, dprev, dmus = token_shift_mix_backward(x, prev, mus, grads, None, needs[0], needs[1], needs[2:])
    return (dx, dprev, *dmus)


_TS_OP = opaque_op("token_shift_mix", lambda x, prev, *mus: (_triton_impl()(x, prev, mus), ()),
                   fake=lambda x, prev, *mus: tuple(torch.empty_like(x) for _ in mus),
                   backward=_op_backward, fake_saved=lambda *args: ())
"""The Triton path as the custom op ``spikelm::token_shift_mix`` (used under ``torch.compile``),
whose backward runs the backward kernel directly (``opaque_op``'s saved-tensor kind, with
nothing saved besides the inputs)."""
