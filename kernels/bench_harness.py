"""The harness of the kernel benchmarks (``python -m spikelm.kernels.bench``, ``python -m spikelm.kernels.gla.bench``).

Both benchmarks time, for each implementation of an op, an inference forward (``fwd``, no
autograd state) and a training forward plus backward with given upstream gradients
(``fwd+bwd``), and report the peak memory of one forward+backward. This module holds what they
share: the common command-line options, the timer (on CUDA: an L2 flush before every timed
call and the median of CUDA-event times; on CPU: the median of wall-clock times, both after
warm-up calls that absorb compilation and autotuning), the memory measurement, the device's
peak memory bandwidth, and the markdown table lines.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Sequence

import torch

__all__ = ["DTYPES", "PEAK_GBPS", "Timer", "peak_gbps", "fmt", "make_parser", "add_run_options", "parse",
           "check_dtypes", "fwd_closure", "fwdbwd_closure", "measure", "table_header", "table_row", "write_report"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Accepted ``--dtype(s)`` names."""

# peak HBM/GDDR bandwidth in GB/s by device-name fragment (vendor data sheets); --peak-gbps overrides
PEAK_GBPS = [
    ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0), ("GH200", 4000.0),
    ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0), ("L40S", 864.0), ("L4", 300.0),
    ("A10G", 600.0), ("RTX 4090", 1008.0), ("V100", 900.0),
]


class Timer:
    """``timer(fn)``: median milliseconds of ``fn()`` over ``reps`` calls after ``warmup`` calls."""

    def __init__(self, device: torch.device, reps: int, warmup: int):
        self.device, self.reps, self.warmup = device, reps, warmup
        self._flush = torch.empty(64 * 2**20, dtype=torch.int32, device=device) if device.type == "cuda" else None

    def __call__(self, fn: Callable[[], object]) -> float:
        """Median milliseconds of ``fn()`` (after warm-up calls, which absorb compilation/autotuning)."""
        for _ in range(self.warmup):
            fn()
        times = []
        if self.device.type == "cuda":
            for _ in range(self.reps):
                self._flush.zero_()  # evict L2 (256 MiB > any L2)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(self.reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def peak_mb(self, fn: Callable[[], object]) -> float | None:
        """MiB allocated by one ``fn()`` at its peak, above what was allocated before (CUDA; else None)."""
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def peak_gbps(device: torch.device, override: float | None) -> float | None:
    """Peak memory bandwidth (GB/s): ``override`` if given, else from :data:`PEAK_GBPS` by CUDA device name."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for frag, gbps in PEAK_GBPS:
        if frag in name:
            return gbps
    return None


def fmt(v: float | None, spec: str) -> str:
    """``format(v, spec)``, or ``"n/a"`` for a value not measured."""
    return "n/a" if v is None else format(v, spec)


def make_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser named ``prog`` (described by ``doc``'s first line) with ``--device``."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Add ``--reps``, ``--warmup``, ``--quick`` and ``--out`` (the options every benchmark has)."""
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default: 20 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 3 on CUDA, 1 on CPU)")
    p.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    p.add_argument("--out", default=None, help="also write the report (markdown) to this file")


def parse(p: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, torch.device, Timer] | None:
    """Add :func:`add_run_options` to ``p`` and parse ``argv``: ``(args, device of --device, Timer for
    --reps/--warmup)``, or None (after a message on stderr) when CUDA is asked for but not available.
    Exits (``SystemExit``) for bad arguments and ``--help``, as argparse does."""
    add_run_options(p)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return None
    reps = args.reps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    return args, device, Timer(device, reps, warmup)


def check_dtypes(p: argparse.ArgumentParser, names: Sequence[str]) -> list[torch.dtype]:
    """The dtypes of ``names`` (keys of :data:`DTYPES`); ``p.error`` (exit 2) for an unknown one."""
    for d in names:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; accepted: {', '.join(DTYPES)}")
    return [DTYPES[d] for d in names]


def fwd_closure(fn: Callable, inputs: Sequence) -> Callable[[], None]:
    """Closure: ``fn(*inputs)`` under ``torch.no_grad()`` (an inference forward)."""
    def run():
        with torch.no_grad():
            fn(*inputs)
    return run


def fwdbwd_closure(fn: Callable, inputs: Sequence, upstream: Sequence) -> Callable[[], None]:
    """Closure: run ``fn(*inputs)`` and backpropagate ``upstream`` (aligned with the outputs; None
    skips an output), then drop the inputs' ``.grad``."""
    def run():
        out = fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        pairs = [(o, g) for o, g in zip(outs, upstream) if g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        for t in inputs:
            if isinstance(t, torch.Tensor):
                t.grad = None
    return run


def measure(timer: Timer, fwd: Callable[[], object], fwdbwd: Callable[[], object]
            ) -> tuple[float | None, float | None, float | None, str]:
    """``(fwd ms, fwd+bwd ms, peak MiB of fwd+bwd, note)``. Raises nothing: a failing call (a dtype a
    backend lacks, out of memory) leaves the rest None and puts the error in the note."""
    vals: list = [None, None, None]
    try:
        vals[0] = timer(fwd)
        vals[1] = timer(fwdbwd)
        vals[2] = timer.peak_mb(fwdbwd)
    except Exception as e:
        return vals[0], vals[1], vals[2], f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return vals[0], vals[1], vals[2], ""


def table_header(columns: Sequence[str], align: str) -> list[str]:
    """The two header lines of a markdown table; ``align`` has one letter per column, ``l`` or ``r``."""
    return [table_row(columns), "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]


def table_row(cells: Sequence[object]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def write_report(path: str | None, lines: Sequence[str]) -> None:
    """Write ``lines`` (markdown) to ``path`` when one is given."""
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
