"""Where an op runs: Triton on CUDA, torch on CPU, Triton on CPU only under the interpreter.

The rule is the one in DESIGN.md section 4. Every public kernel function calls
:func:`use_triton` with its input tensor and picks its implementation from the answer.
"""
from __future__ import annotations

import os

import torch


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


def use_triton(x: torch.Tensor) -> bool:
    """Whether the Triton implementation should run for tensor ``x``.

    Returns True for CUDA tensors (when Triton imports) and for CPU tensors when
    ``TRITON_INTERPRET=1``; False otherwise, meaning the torch path runs.
    """
    if os.environ.get("SPIKELM_DISABLE_TRITON", "0") == "1" or not triton_available():
        return False
    if x.is_cuda:
        return True
    return x.device.type == "cpu" and triton_interpreting()


def check_tensor(name: str, t: torch.Tensor, *, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64)) -> None:
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


_TRITON_CACHE: dict = {}


def triton_kernel(fn, device: torch.device):
    """The launchable form of the plain kernel function ``fn`` for ``device``.

    CPU: Triton's interpreter (built directly, so it works whatever ``TRITON_INTERPRET`` was
    when triton was imported). CUDA: ``triton.jit(fn)``. Cached per function and device type.
    """
    import triton

    key = (fn.__module__, fn.__qualname__, device.type)
    if key not in _TRITON_CACHE:
        if device.type == "cpu":
            from triton.runtime.interpreter import InterpretedFunction

            _TRITON_CACHE[key] = InterpretedFunction(fn)
        else:
            _TRITON_CACHE[key] = triton.jit(fn)
    return _TRITON_CACHE[key]
