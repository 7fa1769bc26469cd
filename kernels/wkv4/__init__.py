"""RWKV-4 WKV op (SpikeGPT's time-mix core): ``wkv4``.

Implementations: ``naive.wkv4_naive`` (token by token, the reference and the decoding step),
``torch_loop.wkv4_torch_loop`` (CPU training path: hand-written backward, vectorised over
all but the state recursion), ``torch_chunk.wkv4_torch_chunk`` (autograd through the final
state too), and the Triton kernels of ``fused_recurrent.py``. Dispatch
(``spikelm.kernels.dispatch``): Triton where :func:`~spikelm.kernels.dispatch.use_triton` says
so (CUDA tensors, and CPU tensors under ``TRITON_INTERPRET=1``, unless the backend is ``"torch"``)
and that module imports, else ``wkv4_torch_loop``.
"""
from __future__ import annotations

import torch

from ..custom_op import opaque_op
from ..dispatch import state_gradients_enabled, use_triton
from .checks import check_wkv4_inputs
from .naive import EMPTY_PP, wkv4_init_state, wkv4_naive
from .torch_chunk import wkv4_torch_chunk
from .torch_loop import wkv4_torch_backward, wkv4_torch_forward, wkv4_torch_loop

__all__ = ["wkv4", "wkv4_naive", "wkv4_torch_loop", "wkv4_torch_chunk", "wkv4_init_state", "EMPTY_PP"]

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _triton_impl():
    try:
        from .fused_recurrent import wkv4_fused_recurrent
    except ImportError:
        return None
    return wkv4_fused_recurrent


def wkv4(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State | None = None, *,
         backend: str | None = None) -> tuple[torch.Tensor, State]:
    """RWKV-4 WKV recurrence over a sequence (formula in ``naive.py``).

    Args:
        w: ``[D]`` per-channel decay rate, > 0 (SpikeGPT: ``exp(time_decay)``), any float dtype.
        u: ``[D]`` per-channel bonus for the current token (``time_first``).
        k, v: ``[B, L, D]`` keys and values, fp32/fp16/bf16 (fp64 for gradcheck), same dtype.
        state: ``(aa, bb, pp)``, each ``[B, D]`` float32, from ``wkv4_init_state`` or a previous
            call (continuing a sequence exactly); None for the empty state.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or None for the current setting
            (``spikelm.kernels.dispatch``). float64 and empty batches use the torch path.
    Returns:
        ``(y, state)``: ``y [B, L, D]`` in ``v.dtype``; the state after the last token (fp32).
        The returned state is not differentiable on the fast paths (it is inside
        ``spikelm.kernels.dispatch.state_gradients()``, which takes ``wkv4_torch_chunk``).
    Raises:
        TypeError: non-float inputs or ``k``/``v`` of different dtypes.
        ValueError: shape mismatch, empty sequence, tensors on different devices, an unknown
            ``backend``.
        TritonUnavailableError: ``backend="triton"`` where Triton cannot run (not installed, a
            CPU tensor without ``TRITON_INTERPRET=1``).
    """
    check_wkv4_inputs(w, u, k, v, state)
    args = (w, u, k, v, *(state if state is not None else (None, None, None)), backend)
    if not torch.compiler.is_compiling():
        y, aa, bb, pp = _wkv4_flat(*args)
    elif _path(k, backend) == "loop":  # the CPU loop, with its saved-tensor backward
        y, aa, bb, pp = _WKV4_TORCH_OP(*args[:-1])
    else:
        y, aa, bb, pp = _WKV4_OP(*args)
    return y, (aa, bb, pp)


def _path(k: torch.Tensor, backend: str | None) -> str:
    """Which implementation ``_wkv4_flat`` runs: ``"triton"``, ``"chunk"`` (state gradients) or ``"loop"``."""
    if use_triton(k, backend) and _triton_impl() is not None:
        return "triton"
    return "chunk" if state_gradients_enabled() else "loop"


def _wkv4_flat(w, u, k, v, aa, bb, pp, backend):
    """``wkv4`` with the state as three arguments and the result flat: ``(y, aa, bb, pp)``."""
    state = None if aa is None else (aa, bb, pp)
    path = _path(k, backend)
    if path == "triton":
        y, st = _triton_impl()(w, u, k, v, state)
        return (y, *st)
    if path == "chunk":  # sequence parallelism: gradients through both states
        y, st = wkv4_torch_chunk(w, u, k, v, state)
        return (y, *st)
    y, st = wkv4_torch_loop(w, u, k, v, state)
    return (y, *st)


def _wkv4_torch_fwd(w, u, k, v, aa, bb, pp):
    """The CPU loop's forward for ``spikelm::wkv4_torch``: ``((y, aa, bb, pp), saved)``
    (``torch_loop.wkv4_torch_forward``; None state: the empty one)."""
    if aa is None:
        aa, bb, pp = wkv4_init_state(k.shape[0], k.shape[2], k.device)
    return wkv4_torch_forward(w, u, k, v, aa, bb, pp)


def _wkv4_torch_bwd(args, saved, grads, needs):
    """The CPU loop's hand-written backward for ``spikelm::wkv4_torch`` (``opaque_op``'s
    ``backward``): gradients of ``(w, u, k, v, aa, bb, pp)``; the final state has none."""
    w, u, k, v, aa, bb, pp = args
    state_dtypes = (torch.float32,) * 3 if aa is None else (aa.dtype, bb.dtype, pp.dtype)
    gy = grads[0] if grads[0] is not None else torch.zeros_like(v)
    g = wkv4_torch_backward(w, k, v, (w.dtype, u.dtype, k.dtype, v.dtype, *state_dtypes), saved, gy)
    return g if aa is not None else g[:4] + (None,) * 3


def _wkv4_torch_saved_fake(w, u, k, v, aa, bb, pp):
    B, L, D = k.shape
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    return tuple(torch.empty(L, B, D, dtype=acc, device=k.device) for _ in range(7))


def _wkv4_fake(w, u, k, v, aa, bb, pp, backend):
    B, _, D = k.shape
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    return (torch.empty_like(v), *(torch.empty(B, D, dtype=acc, device=k.device) for _ in range(3)))


_WKV4_OP = opaque_op("wkv4", _wkv4_flat, fake=_wkv4_fake)
"""``_wkv4_flat`` as the custom op ``spikelm::wkv4`` (``spikelm.kernels.custom_op``; the Triton
and state-gradient paths under ``torch.compile``; its backward recomputes the forward)."""

_WKV4_TORCH_OP = opaque_op("wkv4_torch", _wkv4_torch_fwd, fake=lambda w, u, k, v, *st: _wkv4_fake(w, u, k, v, *st, None),
                           backward=_wkv4_torch_bwd, fake_saved=_wkv4_torch_saved_fake)
"""The CPU loop (``torch_loop``) as the custom op ``spikelm::wkv4_torch`` with a saved-tensor
backward (the states entering each token and the output's normalisers; used under
``torch.compile`` off the Triton path)."""
