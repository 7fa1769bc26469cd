"""What the Triton kernel modules share: allocation, compilation and launch, device functions, block checks.

The kernels of this package are plain Python functions written in ``triton.language``.
:func:`kernel` turns one into its launchable form for a device: Triton's interpreter for CPU
tensors (tests; built directly, so it works whatever ``TRITON_INTERPRET`` was when triton was
imported) and ``triton.jit`` for CUDA tensors, optionally wrapped in ``triton.autotune``.
Functions called *from* kernels are marked with :func:`device_function`, which makes them
inlined Triton device functions in compiled kernels and interpreted helpers on CPU.

This module imports without Triton (``import triton`` happens inside the functions that need
it), so the pure-torch modules may use its checks on machines where Triton is not installed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["empty", "check_power_of_two", "default_block", "kernel", "launch_lanes", "device_function"]


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``.

    Every uninitialised allocation of the Triton modules goes through here (looked up at call
    time as ``triton_utils.empty``), so tests can fill fresh buffers with NaN and catch a kernel
    that reads a slot it never wrote.
    """
    return torch.empty(shape, dtype=dtype, device=device)


def check_power_of_two(name: str, value: int | None, minimum: int = 16) -> None:
    """Raise ``ValueError`` unless ``value`` is None or a power of two ``>= minimum``.

    The block, tile and chunk sizes of the kernels (``tl.arange`` lengths) must be powers of
    two; 16 is the smallest ``tl.dot`` operand and the smallest block used anywhere.
    """
    if value is not None and (value < minimum or value & (value - 1)):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {value}")


def next_power_of_2(n: int) -> int:
    """Smallest power of two ``>= n`` (1 for ``n <= 1``); ``triton.next_power_of_2`` without Triton."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def default_block(n: int, largest: int = 4096) -> int:
    """Block length covering ``n`` elements in one program: ``next_power_of_2(n)``, clamped to ``[16, largest]``."""
    return min(max(next_power_of_2(n), 16), largest)


_CACHE: dict = {}


def kernel(fn: Callable, device: torch.device, *, configs: Sequence[tuple[int, int, int]] | None = None,
           key: Sequence[str] = ()):
    """The launchable form of the plain kernel function ``fn`` for ``device``, cached.

    CPU: Triton's interpreter (``InterpretedFunction``). CUDA: ``triton.jit(fn)``; with
    ``configs`` (``(BLOCK, num_warps, CHUNK)`` triples) wrapped in ``triton.autotune`` keyed on
    the argument names ``key`` (autotuning needs a GPU driver, so ``configs`` is ignored on CPU).
    Raises ``ImportError`` when Triton is not installed.
    """
    import triton

    tuned = device.type != "cpu" and configs is not None
    cache_key = (fn.__module__, fn.__qualname__, device.type, tuple(key) if tuned else None)
    if cache_key not in _CACHE:
        if device.type == "cpu":
            from triton.runtime.interpreter import InterpretedFunction

            _CACHE[cache_key] = InterpretedFunction(fn)
        elif tuned:
            tuned_configs = [triton.Config({"BLOCK": b, "CHUNK": c}, num_warps=w) for b, w, c in configs]
            _CACHE[cache_key] = triton.autotune(configs=tuned_configs, key=list(key))(triton.jit(fn))
        else:
            _CACHE[cache_key] = triton.jit(fn)
    return _CACHE[cache_key]


def launch_lanes(fn: Callable, device: torch.device, lanes: int, grid: Callable[[int], tuple], block_size: int | None,
                 args: tuple, consts: dict, *, configs: Sequence[tuple[int, int, int]], key: Sequence[str],
                 chunk: int) -> None:
    """Launch a recurrent kernel whose programs own ``BLOCK`` independent lanes and load ``CHUNK`` steps ahead.

    ``grid(BLOCK)`` gives the launch grid, ``lanes`` is the lane count one row of programs
    covers. On CUDA without ``block_size``, ``BLOCK``/``CHUNK``/``num_warps`` are autotuned
    over ``configs`` (keyed on the argument names ``key``); otherwise ``BLOCK`` is
    ``block_size`` or :func:`default_block` of ``lanes`` (few, wide programs: fastest in the
    interpreter) and ``CHUNK`` is ``chunk``. ``args``/``consts`` are the kernel's other
    positional and constexpr arguments.
    """
    if device.type == "cuda" and block_size is None:
        tuned = kernel(fn, device, configs=configs, key=key)
        tuned[lambda meta: grid(meta["BLOCK"])](*args, **consts)
        return
    block = block_size or default_block(lanes)
    kernel(fn, device)[grid(block)](*args, BLOCK=block, CHUNK=chunk, **consts)


_DEVICE_FUNCTION_CLASS = None


def device_function(fn: Callable):
    """Decorator: ``fn`` (written in ``triton.language``) becomes a function the kernels can call.

    In a compiled kernel it is a ``triton.jit`` device function (Triton inlines it); when the
    kernel runs in the interpreter, calling it runs ``fn`` as the interpreter runs a kernel body
    (its source rewritten the same way). So the kernels share code without depending on the
    ``TRITON_INTERPRET`` setting at import time. Raises ``ImportError`` without Triton.
    """
    global _DEVICE_FUNCTION_CLASS
    if _DEVICE_FUNCTION_CLASS is None:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        class DeviceFunction(JITFunction):
            """A ``JITFunction`` that, called outside a compiled kernel (the interpreter), runs ``fn``."""

            _interpreted = None

            def __call__(self, *args, **kwargs):
                if self._interpreted is None:
                    self._interpreted = InterpretedFunction(self.fn).rewrite()
                return self._interpreted(*args, **kwargs)

        _DEVICE_FUNCTION_CLASS = DeviceFunction
    return _DEVICE_FUNCTION_CLASS(fn)
