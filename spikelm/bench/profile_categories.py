"""Where a profiled step's time goes: ``torch.profiler`` events sorted into categories by op name.

An op whose name matches a category below claims its whole subtree (an autograd Function's or
the optimizer's inner ``aten::mul`` counts for it, not for elementwise); ops outside every
claimed subtree fall to :data:`DEFAULT`. Each event adds its *self* time, so nothing counts
twice. On CPU the time is host time; on CUDA it is device (kernel) time, and "idle" is the
step's wall time minus the union of the device events (CPU: minus the union of top-level ops).
"""
from __future__ import annotations

import re

import torch

CATEGORIES: list[tuple[str, str]] = [
    ("communication", r"^c10d::|nccl|gloo|all_?reduce|all_?gather|reduce_scatter|broadcast|record_param_comms"),
    ("optimizer", r"^Optimizer\.|^spikelm\.bench::optimizer|_foreach_|multi_tensor|fused_adam|adamw?_"),
    ("recurrent kernels", r"^spikelm::(wkv|gla)|WKV|wkv|GLA|_gla_|^gla"),
    ("neurons", r"^spikelm::(lif|plif|adaptive|spike)|LIF|_lif_|AdaptiveSpike|adaptive_spike|Heaviside|^_STE"),
    ("matmul", (r"^aten::(mm|bmm|addmm|baddbmm|addbmm|addmv|mv|dot|matmul|linear|_?scaled_dot_product\w*|"
                r"_flash_attention\w*|_efficient_attention\w*|convolution|_convolution|mkldnn_\w+)$|"
                r"gemm|cutlass|cublas|xmma|^triton_tem|_mm_|_mm$")),
]
"""``(category, regex on the op name)``, first match wins. "recurrent kernels" are the WKV/GLA
ops (our autograd Functions, ``spikelm::`` custom ops, their Triton kernels); "neurons" the
LIF and adaptive-spike ops; "optimizer" the AdamW step and everything in the engine's step
(clipping, zeroing; ``spikelm.bench::optimizer_step`` is the bench's range around it)."""

DEFAULT = "norms/elementwise"
"""Everything else: norms, elementwise and reductions, copies, loss, embedding, Inductor's fused kernels."""

IDLE = "idle host"

ORDER = ["matmul", "recurrent kernels", "neurons", DEFAULT, "optimizer", "communication", IDLE]
"""The categories in report order."""

_COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]


def categorize(name: str) -> str | None:
    """The category whose pattern matches op ``name`` first, or None (no claim: :data:`DEFAULT`
    unless an enclosing op claims it)."""
    for category, pattern in _COMPILED:
        if pattern.search(name):
            return category
    return None


def _union_us(intervals) -> float:
    """Total length (us) of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def _cuda(e) -> bool:
    return e.device_type == torch.autograd.DeviceType.CUDA


def category_times(events, wall_s: float, cuda: bool = False) -> dict[str, float]:
    """Seconds per category (:data:`ORDER`) of one profiled step.

    Args:
        events: the profiler's ``events()`` (an ``EventList`` of ``FunctionEvent``).
        wall_s: the step's wall time in seconds (the profiled step, device synchronised).
        cuda: attribute device (kernel) time instead of host time.
    Returns:
        ``{category: seconds}`` with every key of :data:`ORDER`; ``"idle host"`` is ``wall_s``
        minus the busy time (union of device events on CUDA, of top-level host ops on CPU),
        at least 0. The other categories sum to the busy time (up to overlap of device streams).
    """
    times = dict.fromkeys(ORDER, 0.0)
    host = [e for e in events if not _cuda(e)]

    def visit(e, claimed: str | None) -> None:
        category = claimed or categorize(e.name)
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        times[category or DEFAULT] += us / 1e6
        for child in e.cpu_children:
            visit(child, category)

    for e in host:
        if e.cpu_parent is None:
            visit(e, None)
    busy_events = [e for e in events if _cuda(e)] if cuda else [e for e in host if e.cpu_parent is None]
    busy = _union_us((e.time_range.start, e.time_range.end) for e in busy_events) / 1e6
    times[IDLE] = max(0.0, wall_s - busy)
    return times
