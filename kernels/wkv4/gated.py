"""Gated RWKV-4 WKV: ``wkv4_gated`` = ``sigmoid(r) * wkv4(w, u, k, v)`` (SpikeGPT's time-mix core).

Formula (RWKV-4, Peng et al. 2023; SpikeGPT, Zhu et al. 2023, ``src/model.py``
``RWKV_TimeMix``: ``rwkv = sigmoid(r) * wkv``)::

    out_t = sigmoid(r_t) * wkv_t,   wkv_t as in ``naive.py``

On the Triton path the gate runs in the WKV kernel's epilogue (``fused_recurrent.py``,
``wkv4_gated_fused_recurrent``): one launch forward and one backward instead of the WKV kernel,
a ``sigmoid`` and a ``mul`` forward and their backward. The torch path (the CPU training path)
is ``wkv4`` followed by the same ``sigmoid``/``mul`` the time-mix layer wrote before, so its
values are those of the unfused code bit for bit. Under ``torch.compile`` the Triton path is the
custom op ``spikelm::wkv4_gated``; the torch path is ``wkv4`` (its own custom op) and traced
elementwise code.
"""
from __future__ import annotations

import torch

from ..custom_op import opaque_op
from ..dispatch import use_triton
from . import wkv4
from .checks import check_wkv4_inputs
from .naive import wkv4_naive

__all__ = ["wkv4_gated", "wkv4_gated_naive"]

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _triton_impl():
    try:
        from .fused_recurrent import wkv4_gated_fused_recurrent
    except ImportError:
        return None
    return wkv4_gated_fused_recurrent


def _check_r(r, k) -> None:
    if not isinstance(r, torch.Tensor):
        raise TypeError(f"r must be a torch.Tensor, got {type(r).__name__}")
    if r.shape != k.shape:
        raise ValueError(f"r must be [B, L, D] = {tuple(k.shape)} like k, got {tuple(r.shape)}")
    if r.device != k.device:
        raise ValueError(f"all tensors must be on one device, got r on {r.device}, k on {k.device}")


def wkv4_gated_naive(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                     state: State | None = None) -> tuple[torch.Tensor, State]:
    """The reference: ``sigmoid(r) * wkv4_naive(...)`` token by token, in the inputs' dtype
    (``naive.wkv4_naive``; RWKV-4 / SpikeGPT). Shapes as :func:`wkv4_gated`."""
    y, st = wkv4_naive(w, u, k, v, state)
    return torch.sigmoid(r) * y.to(r.dtype), st


def wkv4_gated(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
               state: State | None = None, *, backend: str | None = None) -> tuple[torch.Tensor, State]:
    """``sigmoid(r) * wkv`` of RWKV-4 over a sequence (module docstring; Peng et al. 2023; SpikeGPT).

    Args:
        w: ``[D]`` per-channel decay rate, > 0 (SpikeGPT: ``exp(time_decay)``), any float dtype.
        u: ``[D]`` per-channel bonus for the current token (``time_first``).
        k, v: ``[B, L, D]`` keys and values, fp32/fp16/bf16 (fp64 for gradcheck), same dtype.
        r: ``[B, L, D]`` receptance (the gate's input), a float tensor.
        state: ``(aa, bb, pp)``, each ``[B, D]`` float32, from ``wkv4_init_state`` or a previous
            call; None for the empty state.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or None for the current setting
            (``spikelm.kernels.dispatch``). float64 and empty batches use the torch path.
    Returns:
        ``(out, state)``: ``out [B, L, D]`` in ``r.dtype`` (torch path: ``sigmoid(r) *
        wkv.to(r.dtype)``), differentiable in ``w, u, k, v, r`` and the initial state; the state
        after the last token (fp32, not differentiable on the fast paths).
    Raises:
        TypeError: non-float inputs, ``k``/``v`` of different dtypes, ``r`` not a tensor.
        ValueError: shape mismatch (``r`` not of ``k``'s shape included), empty sequence, tensors
            on different devices, an unknown ``backend``.
        TritonUnavailableError: ``backend="triton"`` where Triton cannot run.
    """
    check_wkv4_inputs(w, u, k, v, state)
    _check_r(r, k)
    if use_triton(k, backend) and v.dtype != torch.float64 and k.shape[0] * k.shape[2] > 0:
        impl = _triton_impl()
        if impl is not None:
            if torch.compiler.is_compiling():
                out, aa, bb, pp = _GATED_OP(w, u, k, v, r, *(state if state is not None else (None,) * 3))
                return out, (aa, bb, pp)
            return impl(w, u, k, v, r, state)
    y, st = wkv4(w, u, k, v, state, backend=backend)
    return torch.sigmoid(r) * y.to(r.dtype), st


def _gated_fake(w, u, k, v, r, aa, bb, pp):
    B, _, D = k.shape
    return (torch.empty_like(r), *(torch.empty(B, D, dtype=torch.float32, device=k.device) for _ in range(3)))


def _gated_op_forward(w, u, k, v, r, aa, bb, pp):
    """``spikelm::wkv4_gated``'s forward: ``((out, aa, bb, pp), (sa, sb, sp))``, the saved
    per-token states its backward reads (``fused_recurrent.wkv4_gated_forward``)."""
    from .fused_recurrent import wkv4_gated_forward

    w, u, k, v, r = (t.contiguous() for t in (w, u, k, v, r))
    aa, bb, pp = (None, None, None) if aa is None else (s.contiguous() for s in (aa, bb, pp))
    out, oa, ob, op, saved = wkv4_gated_forward(w, u, k, v, r, aa, bb, pp, None, True)
    return (out, oa, ob, op), saved


def _gated_op_backward(args, saved, grads, needs):
    """``spikelm::wkv4_gated``'s saved-tensor backward: the backward kernel, no second forward."""
    from .fused_recurrent import wkv4_gated_backward

    w, u, k, v, r, aa, bb, pp = args
    if grads[0] is None:
        return (None,) * 8
    w, u, k, v, r = (t.contiguous() for t in (w, u, k, v, r))
    dtypes = (aa.dtype, bb.dtype, pp.dtype) if aa is not None and any(needs[5:8]) else None
    return wkv4_gated_backward(w, u, k, v, r, saved, grads[0], dtypes, None)


def _gated_fake_saved(w, u, k, v, r, *state):
    return tuple(torch.empty(k.shape, dtype=torch.float32, device=k.device) for _ in range(3))


_GATED_OP = opaque_op("wkv4_gated", _gated_op_forward, fake=_gated_fake, backward=_gated_op_backward,
                      fake_saved=_gated_fake_saved)
"""The Triton path as the custom op ``spikelm::wkv4_gated`` (used under ``torch.compile``), with a
saved-tensor backward: the backward kernel runs on the forward's saved per-token states."""
