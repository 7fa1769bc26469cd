"""Gated linear attention (GLA) op, SpikingBrain-7B's linear-attention core: ``gla``.

Implementations: ``naive.gla_naive`` (token by token, the reference), ``torch_chunk.
gla_torch_chunk`` (CPU training and prefill path, autograd), ``chunk.gla_chunk`` (Triton,
chunked, training and prefill) and ``fused_recurrent.gla_fused_recurrent`` (Triton, token by
token, decoding). Dispatch (``spikelm.kernels.dispatch``): with ``mode="auto"`` the Triton
kernels run where :func:`~spikelm.kernels.dispatch.use_triton` says so (CUDA tensors, and CPU tensors under ``TRITON_INTERPRET=1``, unless the backend is ``"torch"``)
for a float32/float16/bfloat16 input, else the torch paths.
"""
from __future__ import annotations

import torch

from ..custom_op import opaque_op
from ..dispatch import use_triton
from .checks import check_gla_inputs
from .naive import gla_init_state, gla_naive
from .torch_chunk import gla_torch_chunk

__all__ = ["gla", "gla_naive", "gla_torch_chunk", "gla_init_state", "MODES"]

MODES = ("auto", "chunk", "fused_recurrent", "torch", "naive")


def gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
        initial_state: torch.Tensor | None = None, *, mode: str = "auto", backend: str | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated linear attention ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``
    (Yang et al. 2024, GLA; formula in ``naive.py``).

    Args:
        q, k, g: ``[B, L, H, K]``; v: ``[B, L, H, V]`` (fla layout); q, k, v of one dtype
            (float32/float16/bfloat16, float64 on the torch paths); g: log decays, ``<= 0``.
        scale: multiplies ``q`` (default ``K ** -0.5``).
        initial_state: ``[B, H, K, V]`` (float32 preferred) or None for zeros.
        mode: ``"auto"`` (where Triton runs: ``chunk``, or ``fused_recurrent`` for single tokens
            and short inference prompts; else torch ``chunk``, the naive step for one token),
            or force ``"chunk"``/``"fused_recurrent"`` (Triton; on CPU only under
            ``TRITON_INTERPRET=1``), ``"torch"`` (torch chunked) or ``"naive"``.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or None for the current setting
            (``spikelm.kernels.dispatch``): whether Triton may run, for ``mode="auto"`` and the
            check of the Triton modes (``"triton"`` raises where it cannot run).
    Returns:
        ``(o [B, L, H, V] in v.dtype, final state [B, H, K, V] float32 (float64 for float64))``,
        both differentiable in every input.
    Raises:
        TypeError: non-float inputs or q/k/v dtypes differ.
        ValueError: shape mismatch, empty sequence, devices differ, unknown ``mode`` or
            ``backend`` (the message lists the accepted ones), a Triton mode where Triton does
            not run (backend ``"torch"``, a CPU tensor without ``TRITON_INTERPRET=1``, float64).
        TritonUnavailableError: ``backend="triton"`` where Triton cannot run (not installed,
            a CPU tensor without ``TRITON_INTERPRET=1``).
    """
    if mode not in MODES:
        raise ValueError(f"unknown gla mode {mode!r}; accepted: {', '.join(MODES)}")
    L = check_gla_inputs(q, k, v, g, initial_state)[1]
    triton_ok = use_triton(q, backend) and q.dtype != torch.float64
    if mode in ("chunk", "fused_recurrent") and not triton_ok:
        raise ValueError(f"gla mode {mode!r} needs Triton on a CUDA tensor (or TRITON_INTERPRET=1 on CPU), a "
                         "backend other than 'torch' and a float32/float16/bfloat16 input")
    if mode == "auto":
        if triton_ok:
            short = L == 1 or (L <= 64 and not torch.is_grad_enabled())
            mode = "fused_recurrent" if short else "chunk"
        else:
            mode = "naive" if L == 1 else "torch"
    args = (q, k, v, g, scale, initial_state, mode)
    # under torch.compile the Triton modes are custom ops (spikelm::gla_chunk, spikelm::gla); the
    # torch modes are tensor code over L / 64 chunks (or one step), which the compiler traces
    if mode == "chunk" and torch.compiler.is_compiling():
        return tuple(_GLA_CHUNK_OP(q, k, v, g, q.shape[-1] ** -0.5 if scale is None else float(scale), initial_state))
    if mode == "fused_recurrent" and torch.compiler.is_compiling():
        return tuple(_GLA_OP(*args))
    return _gla_mode(*args)


def _gla_mode(q, k, v, g, scale, initial_state, mode):
    """``gla`` with the implementation ``mode`` resolved (chunk, fused_recurrent, naive, torch)."""
    if mode == "chunk":
        from .chunk import gla_chunk

        return gla_chunk(q, k, v, g, scale, initial_state)
    if mode == "fused_recurrent":
        from .fused_recurrent import gla_fused_recurrent

        return gla_fused_recurrent(q, k, v, g, scale, initial_state)
    if mode == "naive":
        return gla_naive(q, k, v, g, scale, initial_state)
    return gla_torch_chunk(q, k, v, g, scale, initial_state)


def _gla_fake(q, k, v, g, scale, initial_state, mode):
    B, _, H, K = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.empty_like(v), torch.empty(B, H, K, v.shape[-1], dtype=acc, device=q.device)


_GLA_OP = opaque_op("gla", _gla_mode, fake=_gla_fake)
"""``_gla_mode`` as the custom op ``spikelm::gla`` (``spikelm.kernels.custom_op``; the Triton
``fused_recurrent`` mode under ``torch.compile``; its backward recomputes the forward)."""


def _chunk_forward(q, k, v, g, scale, initial_state):
    """``spikelm::gla_chunk``'s forward (``scale`` a float): ``((o, ht), (gc, h, A, ht))``, what its
    backward reads (``chunk.gla_chunk_forward``)."""
    from .chunk import gla_chunk_forward

    q, k, v, g = (t.contiguous() for t in (q, k, v, g))
    o, ht, saved = gla_chunk_forward(q, k, v, g, initial_state, scale)
    return (o, ht), (*saved, ht)


def _chunk_backward(args, saved, grads, needs):
    """``spikelm::gla_chunk``'s saved-tensor backward: the backward kernels, no second forward."""
    from .chunk import gla_chunk_backward

    q, k, v, g, scale, h0 = args
    do, dht = grads
    if do is None and dht is None:
        return (None,) * 6
    q, k, v = (t.contiguous() for t in (q, k, v))
    do = torch.zeros_like(v) if do is None else do
    dq, dk, dv, dg, dh0 = gla_chunk_backward(q, k, v, saved[:3], saved[3], do, dht, scale)
    return (dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g.dtype), None, None if h0 is None else dh0.to(h0.dtype))


def _chunk_fake_saved(q, k, v, g, scale, initial_state):
    from .chunk import _config

    B, L, H, K = q.shape
    V = v.shape[-1]
    BT, NT = (_config(q, v, None, None, None)[i] for i in (0, 3))  # the forward's chunk length and count
    f32 = dict(dtype=torch.float32, device=q.device)
    return (torch.empty(B, L, H, K, **f32), torch.empty(B, H, NT, K, V, **f32), torch.empty(B, H, L, BT, **f32),
            torch.empty(B, H, K, V, **f32))


_GLA_CHUNK_OP = opaque_op("gla_chunk", _chunk_forward, fake=lambda *a: _gla_fake(*a, "chunk"),
                          backward=_chunk_backward, fake_saved=_chunk_fake_saved)
"""The Triton ``chunk`` mode as the custom op ``spikelm::gla_chunk`` (under ``torch.compile``),
with a saved-tensor backward: the backward kernels run on the forward's gate cumsum, chunk states
and intra-chunk scores."""
