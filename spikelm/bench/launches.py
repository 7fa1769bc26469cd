"""Count the device-kernel launches of a piece of code (``count_launches``) and of one model
block's forward and forward+backward (``block_launches``).

What counts as one launch:

* on CUDA: every device event the profiler records (kernels, memcpy, memset);
* on CPU: every outermost ``aten::`` op that computes (not a view, metadata or bare allocation,
  :data:`NO_KERNEL`, and not an op that only calls others, :data:`COMPOSITE`, whose callees
  count instead), every Triton kernel launch (run by Triton's interpreter
  when ``TRITON_INTERPRET=1``; the ops the interpreter itself runs are not counted) and every
  kernel Inductor generated (``cpp_fused_*``/``triton_*`` events, profiled with
  ``torch._inductor.config.cpp.enable_kernel_profile``).

So a CPU count under ``TRITON_INTERPRET=1`` is what a GPU would launch for the same code:
``x * 2 + 1`` forward is 2 launches (``aten::mul``, ``aten::add``). An aten op counts once even
where its CUDA implementation launches several kernels (layer-norm backward, for one); on CUDA
the device events are exact.
"""
from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile, record_function

NO_KERNEL = frozenset(f"aten::{n}" for n in (
    "view", "_unsafe_view", "_reshape_alias", "view_as", "t", "numpy_T", "as_strided", "expand", "slice", "select",
    "narrow", "unsqueeze", "squeeze", "transpose", "permute", "alias", "detach", "detach_", "lift_fresh", "unbind",
    "split", "split_with_sizes", "chunk", "unflatten", "diagonal", "empty", "empty_strided", "resize_", "set_",
    "resolve_conj", "resolve_neg", "scalar_tensor", "is_nonzero", "result_type", "size", "stride", "numel", "dim",
))
"""``aten::`` ops that launch no kernel: views, metadata and bare allocations."""

COMPOSITE = frozenset(f"aten::{n}" for n in (
    "linear", "matmul", "einsum", "reshape", "flatten", "contiguous", "to", "_to_copy", "type_as", "expand_as",
    "empty_like", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "new_zeros", "new_ones",
    "new_full", "new_empty", "clone", "layer_norm", "group_norm", "rms_norm", "relu", "square", "dropout",
    "softmax", "log_softmax", "cross_entropy_loss", "nll_loss", "nll_loss_nd", "embedding", "embedding_backward",
    "slice_backward", "select_backward", "stack", "item",
))
"""``aten::`` ops that only call other ops (counted through them; 0 when they call none, as
``to``/``contiguous``/``dropout(p=0)`` of a tensor that already fits)."""

TRITON_PREFIX = "triton_launch::"
"""Name prefix of the profiler ranges :func:`mark_triton_launches` puts around each Triton launch."""

GENERATED = ("cpp_fused", "triton_poi", "triton_red", "triton_per", "triton_tem", "triton_for")
"""Name fragments of Inductor-generated kernel events."""


@dataclass
class Launches:
    """Launch counts of one profiled call.

    Attributes:
        aten: outermost computing aten ops (CPU count; 0 on CUDA).
        triton: Triton kernel launches (our kernels).
        generated: Inductor-generated kernels.
        device: device events (CUDA only; 0 on CPU).
        by_name: launches by op / kernel name.
    """

    aten: int = 0
    triton: int = 0
    generated: int = 0
    device: int = 0
    by_name: collections.Counter = field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        """Launches in all: device events on CUDA, else aten + triton + generated."""
        return self.device or (self.aten + self.triton + self.generated)


@contextlib.contextmanager
def mark_triton_launches() -> Iterator[None]:
    """Wrap every Triton launch (``JITFunction.run`` and the interpreter's ``InterpretedFunction.run``)
    in a profiler range named ``triton_launch::<kernel>``, so it counts once and the interpreter's
    own tensor ops below it do not. Autotuning benchmark runs count too: warm up first."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:
        yield
        return
    saved = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}

    def wrap(cls, original):
        def run(self, *args, **kwargs):
            if kwargs.get("warmup"):
                return original(self, *args, **kwargs)
            name = getattr(getattr(self, "fn", None), "__name__", None) or getattr(self, "__name__", "kernel")
            with record_function(TRITON_PREFIX + name):
                return original(self, *args, **kwargs)
        return run

    for cls, original in saved.items():
        cls.run = wrap(cls, original)
    try:
        yield
    finally:
        for cls, original in saved.items():
            cls.run = original


@contextlib.contextmanager
def triton_interpreted(on: bool = True) -> Iterator[None]:
    """``TRITON_INTERPRET=1`` inside the block when ``on`` (our dispatch then runs the Triton
    kernels, interpreted, on CPU tensors), the previous value after it."""
    previous = os.environ.get("TRITON_INTERPRET")
    if on:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def _is_generated(name: str) -> bool:
    return any(name.startswith(g) or f"_{g}" in name for g in GENERATED) and not name.startswith("aten::")


def _walk(event, out: Launches) -> None:
    """Count ``event``'s subtree into ``out`` (CPU rules of the module docstring)."""
    name = event.name
    if name.startswith(TRITON_PREFIX):
        out.triton += 1
        out.by_name[name[len(TRITON_PREFIX):]] += 1
    elif _is_generated(name):
        out.generated += 1
        out.by_name[name] += 1
    elif name.startswith("aten::") and name not in NO_KERNEL and name not in COMPOSITE:
        out.aten += 1  # one kernel; what it calls inside (scalar wrapping, output init) is its business
        out.by_name[name] += 1
    else:
        for child in event.cpu_children:
            _walk(child, out)


def count_events(events, cuda: bool = False) -> Launches:
    """:class:`Launches` of a profiler's ``events()`` (a ``torch.profiler`` ``EventList``)."""
    out = Launches()
    if cuda:
        for e in events:
            if e.device_type == torch.autograd.DeviceType.CUDA:
                out.device += 1
                out.by_name[e.name] += 1
        return out
    for e in events:
        if e.cpu_parent is None and e.device_type == torch.autograd.DeviceType.CPU:
            _walk(e, out)
    return out


def count_launches(fn: Callable[[], object], cuda: bool | None = None) -> Launches:
    """Run ``fn()`` once under the profiler and count its launches (module docstring).

    ``cuda``: count CUDA device events (default: ``torch.cuda.is_available()``); the call is
    synchronised before the profile closes.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with mark_triton_launches(), profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    return count_events(prof.events(), cuda)


def block_label(block) -> str:
    """``"rwkv4+channel_mix (SpikeGPT)"``-style name of a spikelm block's layer type."""
    mixer, mlp = getattr(block, "mixer_type", "?"), getattr(block, "mlp_type", "?")
    spikegpt = mixer == "rwkv4" and mlp == "channel_mix" and getattr(block, "spiking", False)
    return f"{mixer}+{mlp}" + (" (SpikeGPT)" if spikegpt else "")


def block_launches(block: torch.nn.Module, x: torch.Tensor, interpret: bool | None = None) -> dict[str, Launches]:
    """Launches of one block call ``block(x)`` on hidden states ``x [B, L, D]``: ``{"fwd": ...,
    "fwd_bwd": ...}`` (forward with autograd recording; forward + backward of a fixed output
    gradient, input gradient included, parameter grads cleared first). One untimed warm-up
    call first (compilation, autotuning). ``interpret``: run our Triton kernels in the
    interpreter on a CPU ``x`` (default: True on CPU when Triton imports).
    """
    from ..kernels.dispatch import triton_available

    interpret = (x.device.type == "cpu" and triton_available()) if interpret is None else interpret
    x = x.detach().requires_grad_(True)
    grad = torch.randn_like(x)

    def fwd():
        return block(x)[0]

    def fwd_bwd():
        block.zero_grad(set_to_none=True)
        x.grad = None
        torch.autograd.backward(fwd(), grad)

    with triton_interpreted(interpret):
        fwd_bwd()
        counts = {"fwd": count_launches(fwd), "fwd_bwd": count_launches(fwd_bwd)}
    block.zero_grad(set_to_none=True)
    return counts
