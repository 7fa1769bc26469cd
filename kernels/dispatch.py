"""Where an op runs: the kernel backend setting and the input checks shared by the public ops.

Every public kernel function (``lif_multistep``, ``wkv4``, ``adaptive_spike``, ``spike_counts``,
``gla``) takes ``backend=None`` and calls :func:`use_triton` with its input tensor and that
argument to pick its implementation. The backend is the ``backend=`` argument when given,
else the process-wide setting (:func:`set_backend`, or :func:`use_backend` for a block;
``"auto"`` by default). Triton *can run* a tensor on CUDA, and a CPU tensor only under
``TRITON_INTERPRET=1`` (Triton's own variable: its interpreter then runs the kernels, which
is how the tests check them), and only where the ``triton`` package imports:

* ``"auto"``: the Triton kernels where Triton can run the input, the torch path otherwise;
* ``"triton"``: the Triton kernels, and :class:`TritonUnavailableError` where Triton cannot
  run the input (no ``triton`` package; a CPU tensor without ``TRITON_INTERPRET=1``; another
  device) instead of a silent fallback;
* ``"torch"``: the pure-torch path (the CPU training path) on every device.

Some inputs take the torch path whatever the backend (float64 for gradcheck, empty axes);
each op's docstring says which. See ``docs/architecture.md``, section "Kernels".
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

__all__ = ["BACKENDS", "TritonUnavailableError", "set_backend", "get_backend", "use_backend", "use_triton",
           "triton_available", "triton_interpreting", "check_tensor", "check_same_device", "state_gradients",
           "state_gradients_enabled"]

BACKENDS = ("auto", "triton", "torch")
"""Accepted backend names (see the module docstring)."""

_backend = "auto"
_state_grads = False


class TritonUnavailableError(RuntimeError):
    """The ``"triton"`` backend was asked for where Triton cannot run (no ``triton`` package, or a
    tensor Triton cannot run: CPU without ``TRITON_INTERPRET=1``, another device)."""


def triton_interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set (Triton kernels then run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """True when the ``triton`` package imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _checked(name: str) -> str:
    """``name`` if it is an accepted backend (``ValueError`` otherwise, listing them); ``"triton"``
    also needs Triton installed (:class:`TritonUnavailableError` otherwise)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; accepted: {', '.join(BACKENDS)}")
    if name == "triton" and not triton_available():
        raise TritonUnavailableError("kernel backend 'triton' needs the triton package, which does not import "
                                     "here; use backend 'auto' or 'torch'")
    return name


def set_backend(name: str) -> str:
    """Set the process-wide kernel backend: ``"auto"``, ``"triton"`` or ``"torch"`` (module docstring).

    Returns the previous setting (to restore it later). Raises ``ValueError`` for another name
    (the message lists the accepted ones) and :class:`TritonUnavailableError` for ``"triton"``
    when the ``triton`` package does not import; the setting is then unchanged.
    """
    global _backend
    previous, _backend = _backend, _checked(name)
    return previous


def get_backend() -> str:
    """The current process-wide kernel backend (set by :func:`set_backend` or :func:`use_backend`)."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager: the kernel backend is ``name`` inside the block, the previous one after it.

    Raises like :func:`set_backend` (on entry). Yields ``name``.
    """
    previous = set_backend(name)
    try:
        yield name
    finally:
        set_backend(previous)


@contextlib.contextmanager
def state_gradients() -> Iterator[None]:
    """Context manager: inside the block every op differentiates through its initial and final
    recurrent states (sequence parallelism passes them between ranks): the torch paths with
    autograd in every input (WKV-4: ``wkv4_torch_chunk`` instead of ``wkv4_torch_loop``), the
    Triton kernels not at all (their backward passes stop at the states)."""
    global _state_grads
    previous, _state_grads = _state_grads, True
    try:
        yield
    finally:
        _state_grads = previous


def state_gradients_enabled() -> bool:
    """True inside :func:`state_gradients`."""
    return _state_grads


def use_triton(x: torch.Tensor, backend: str | None = None) -> bool:
    """Whether the Triton implementation should run for tensor ``x`` (False: the torch path).

    ``backend``: ``"auto"``, ``"triton"``, ``"torch"`` or None for :func:`get_backend`. True
    where Triton can run ``x`` (a CUDA tensor, or a CPU tensor under ``TRITON_INTERPRET=1``, with
    the ``triton`` package importable) unless the backend is ``"torch"`` or
    :func:`state_gradients` is on. Raises ``ValueError``
    for an unknown backend and, for ``"triton"``, :class:`TritonUnavailableError` where Triton
    cannot run ``x``.
    """
    backend = _checked(_backend if backend is None else backend)
    if backend == "torch" or _state_grads:
        return False
    runs = (x.is_cuda or (x.device.type == "cpu" and triton_interpreting())) and triton_available()
    if backend == "triton" and not runs:
        raise TritonUnavailableError(f"kernel backend 'triton' cannot run a {x.device.type} tensor here: Triton runs "
                                     "CUDA tensors, and CPU tensors only under TRITON_INTERPRET=1 (its interpreter)")
    return runs


def check_tensor(name: str, t: torch.Tensor, *,
                 dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64)) -> None:
    """Raise ``TypeError`` when ``t`` is not a floating tensor of an accepted dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        accepted = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; accepted: {accepted}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` when the given (non-None) tensors are not on one device."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
