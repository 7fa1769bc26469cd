"""Benchmark of the spikelm kernels: ``python -m spikelm.kernels.bench [--quick] [--out FILE]``.

For each op at shapes taken from training (spikegpt-216m: B=12, L=1024, D=768; and the long
context L=4096) it prints forward and forward+backward time of

* ``torch``: the eager torch path the op uses without Triton (the CPU training path):
  ``lif.torch_loop.LIFTorchFunction``, ``wkv4.torch_loop.wkv4_torch_loop``,
  ``adaptive_spike.naive.adaptive_spike_naive``;
* ``compile``: the reference formula (``naive.py``) under ``torch.compile`` (whole function
  when its time loop is at most 64 steps, otherwise the per-step body compiled and the loop
  left in Python, since unrolling 1024+ steps does not compile in reasonable time);
* ``triton``: our fused kernels (CUDA only);
* ``sj-<backend>``: SpikingJelly's multi-step ``LIFNode`` (Triton, else CuPy backend) when
  installed (LIF only, CUDA only),

plus the bytes the Triton kernel must move (a minimal-traffic model written next to each op
below), the effective bandwidth ``bytes / time`` for every implementation, its fraction of the
device's peak memory bandwidth, and the peak memory of one forward+backward. "fwd" is an
inference forward (no autograd state saved); "fwd+bwd" is a training forward plus backward
with random upstream gradients (for LIF on the spikes only, as SpikingJelly returns only
spikes). On CUDA each timed call follows an L2 flush and times are medians of CUDA events.

Without CUDA it prints the CPU reference-path numbers and says that the GPU columns are
unavailable. Targets of issue 3 (checked at the end on CUDA): LIF and adaptive_spike fwd+bwd
at >= 70% of peak HBM bandwidth and >= 1.5x SpikingJelly at S or L >= 16; WKV-4 fwd+bwd >= 10x
the compiled reference with memory linear in L.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from .bench_harness import (DTYPES, check_dtypes, fmt, fwd_closure, fwdbwd_closure, make_parser,
                            measure, parse, peak_gbps, table_header, table_row, write_report)


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    impl: str
    fwd_ms: float | None = None
    fwdbwd_ms: float | None = None
    bytes_fwd: int = 0
    bytes_fwdbwd: int = 0
    peak_mb: float | None = None
    note: str = ""
    seq: int = 0  # S or L of the case (for the targets)


@dataclass
class Case:
    op: str
    label: str
    seq: int
    make: Callable  # (device, dtype) -> dict of implementations and byte counts
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# ops: implementations (fwd, fwd+bwd closures) and byte models
# ----------------------------------------------------------------------------------------------

def lif_case(T: int, N: int, label: str) -> Case:
    def make(device, dtype, compile_ref, sj):
        from .lif.fused_recurrent import lif_fused_recurrent
        from .lif.naive import lif_naive
        from .lif.torch_loop import LIFTorchFunction

        x = torch.randn(T, N, device=device).mul_(1.5).add_(0.5).to(dtype)
        v0 = torch.zeros(N, device=device)
        gs = torch.randn(T, N, device=device).to(dtype)
        xg = x.clone().requires_grad_()
        xb = x.element_size()
        # minimal traffic of the Triton kernels: fwd reads x, writes spikes (+ v0/v_T);
        # training fwd also writes h (fp32); bwd reads h and g_spikes, writes g_x (+ v0/gv0)
        bytes_fwd = T * N * 2 * xb + 8 * N
        bytes_fwdbwd = T * N * (2 * xb + 4) + 8 * N + T * N * (4 + 2 * xb) + 8 * N
        impls = {}
        torch_fn = lambda x: LIFTorchFunction.apply(x, v0, 2.0, 1.0, 0.0, True, False, "atan", 2.0)[0]
        impls["torch"] = (fwd_closure(torch_fn, (x,)), fwdbwd_closure(torch_fn, (xg,), [gs]))
        if compile_ref:
            if T <= 64:
                cfn = torch.compile(lambda x: lif_naive(x, v0, 2.0)[0])
            else:
                step = torch.compile(_lif_step)

                def cfn(x):
                    v = v0.to(x.dtype)
                    out = []
                    for t in range(x.shape[0]):
                        s, v = step(x[t], v)
                        out.append(s)
                    return torch.stack(out)
            impls["compile"] = (fwd_closure(cfn, (x,)), fwdbwd_closure(cfn, (xg,), [gs]))
        if device.type == "cuda":
            tri = lambda x: lif_fused_recurrent(x, v0)[0]
            impls["triton"] = (fwd_closure(tri, (x,)), fwdbwd_closure(tri, (xg,), [gs]))
            if sj:
                for name, node in _spikingjelly_nodes(device):
                    def sj_fn(x, node=node):
                        _sj_reset(node)
                        return node(x)
                    impls[f"sj-{name}"] = (fwd_closure(sj_fn, (x,)), fwdbwd_closure(sj_fn, (xg,), [gs]))
        return impls, bytes_fwd, bytes_fwdbwd

    return Case("lif", label, T, make)


def _lif_step(x_t, v):
    from .lif.surrogate import heaviside

    h = v + (x_t - v) / 2.0
    s = heaviside(h - 1.0, "atan", 2.0)
    return s, h * (1 - s)


def _spikingjelly_nodes(device):
    """(backend, LIFNode) pairs for SpikingJelly's GPU backends that construct and run here."""
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception as e:  # not installed, or a missing dependency of it
        print(f"# spikingjelly unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        return []
    found, no_backend_kw = [], True
    # SpikingJelly <= 0.0.0.0.14: LIFNode(backend="triton"/"cupy"); 2.x dispatches itself and
    # has no backend argument (then one "auto" node)
    for backend in ("triton", "cupy", None):
        if backend is None and not (no_backend_kw and not found):
            break
        kw = dict(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=surrogate.ATan(),
                  detach_reset=False, step_mode="m")
        if backend is not None:
            kw["backend"] = backend
        try:
            node = neuron.LIFNode(**kw).to(device)
            node(torch.zeros(2, 8, device=device))
            _sj_reset(node)
            found.append((backend or "auto", node))
        except Exception as e:  # backend missing or unsupported here
            no_backend_kw = no_backend_kw and isinstance(e, TypeError) and "backend" in str(e)
            print(f"# spikingjelly backend {backend or 'auto'!r} unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    return found


def _sj_reset(node):
    from spikingjelly.activation_based import functional

    functional.reset_net(node)


def wkv4_case(B: int, L: int, D: int, label: str) -> Case:
    def make(device, dtype, compile_ref, sj):
        from .wkv4.fused_recurrent import wkv4_fused_recurrent
        from .wkv4.naive import wkv4_init_state
        from .wkv4.torch_loop import wkv4_torch_loop

        w = (torch.rand(D, device=device) * 2 + 0.05).requires_grad_()
        u = torch.randn(D, device=device).requires_grad_()
        k = (torch.randn(B, L, D, device=device) * 2).to(dtype)
        v = torch.randn(B, L, D, device=device).to(dtype)
        gy = torch.randn(B, L, D, device=device).to(dtype)
        kg, vg = k.clone().requires_grad_(), v.clone().requires_grad_()
        xb = k.element_size()
        n = B * L * D
        # fwd reads k, v, writes y; training fwd also writes the entering state (3 x fp32);
        # bwd reads k, v, gy and the saved state, writes gk, gv (plus O(B*D) state/partials)
        bytes_fwd = n * 3 * xb + 6 * 4 * B * D
        bytes_fwdbwd = n * (3 * xb + 12) + n * (3 * xb + 12 + 2 * xb) + 12 * 4 * B * D
        impls = {}
        tl_fn = lambda w, u, k, v: wkv4_torch_loop(w, u, k, v)[0]
        impls["torch"] = (fwd_closure(tl_fn, (w, u, k, v)), fwdbwd_closure(tl_fn, (w, u, kg, vg), [gy]))
        if compile_ref:
            step = torch.compile(_wkv4_step)

            def cfn(w, u, k, v):
                aa, bb, pp = wkv4_init_state(B, D, device)
                kf, vf = k.float(), v.float()
                ys = []
                for t in range(L):
                    y, aa, bb, pp = step(w, u, kf[:, t], vf[:, t], aa, bb, pp)
                    ys.append(y)
                return torch.stack(ys, 1).to(v.dtype)
            impls["compile"] = (fwd_closure(cfn, (w, u, k, v)), fwdbwd_closure(cfn, (w, u, kg, vg), [gy]))
        if device.type == "cuda":
            tri = lambda w, u, k, v: wkv4_fused_recurrent(w, u, k, v)[0]
            impls["triton"] = (fwd_closure(tri, (w, u, k, v)), fwdbwd_closure(tri, (w, u, kg, vg), [gy]))
        return impls, bytes_fwd, bytes_fwdbwd

    return Case("wkv4", label, L, make)


def _wkv4_step(w, u, kt, vt, aa, bb, pp):
    ww = u + kt
    p = torch.maximum(pp, ww)
    e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
    y = (e1 * aa + e2 * vt) / (e1 * bb + e2)
    ww = pp - w
    p = torch.maximum(ww, kt)
    e1, e2 = torch.exp(ww - p), torch.exp(kt - p)
    return y, e1 * aa + e2 * vt, e1 * bb + e2, p


def adaptive_case(R: int, D: int, label: str, seq: int) -> Case:
    def make(device, dtype, compile_ref, sj):
        from .adaptive_spike.fused import adaptive_spike_fused
        from .adaptive_spike.naive import adaptive_spike_naive

        x = torch.randn(R, D, device=device).to(dtype)
        g = torch.randn(R, D, device=device).to(dtype)
        xg = x.clone().requires_grad_()
        xb = x.element_size()
        # one read of x and one write of the output (rows longer than 4096 read x twice);
        # the straight-through backward passes the gradient on without touching memory
        bytes_fwd = R * D * (2 if D <= 4096 else 3) * xb
        bytes_fwdbwd = bytes_fwd
        impls = {}
        ref = lambda x: adaptive_spike_naive(x, 3.0)
        impls["torch"] = (fwd_closure(ref, (x,)), fwdbwd_closure(ref, (xg,), [g]))
        if compile_ref:
            cfn = torch.compile(ref)
            impls["compile"] = (fwd_closure(cfn, (x,)), fwdbwd_closure(cfn, (xg,), [g]))
        if device.type == "cuda":
            tri = lambda x: adaptive_spike_fused(x, 3.0)
            impls["triton"] = (fwd_closure(tri, (x,)), fwdbwd_closure(tri, (xg,), [g]))
        return impls, bytes_fwd, bytes_fwdbwd

    return Case("adaptive_spike", label, seq, make)


def build_cases(B: int, L: int, D: int, S: int, long_L: int | None) -> list[Case]:
    cases = []
    for Lx in [L] + ([long_L] if long_L else []):
        cases.append(lif_case(Lx, B * D, f"tokens T=L={Lx}, N=B*D={B * D}"))
    cases.append(lif_case(S, B * L * D, f"steps T=S={S}, N=B*L*D={B * L * D}"))
    for Lx in [L] + ([long_L] if long_L else []):
        cases.append(wkv4_case(B, Lx, D, f"B={B}, L={Lx}, D={D}"))
    for Lx in [L] + ([long_L] if long_L else []):
        cases.append(adaptive_case(B * Lx, D, f"[B*L={B * Lx}, D={D}]", seq=Lx))
    return cases


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def header(device: torch.device, argv: list[str], dtype_names: list[str], peak: float | None) -> list[str]:
    import triton  # noqa: F401  (version line)

    try:
        import spikingjelly
        sj_ver = getattr(spikingjelly, "__version__", "installed")
    except Exception:
        sj_ver = "not installed"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return [
        "# spikelm kernel benchmark",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: python -m spikelm.kernels.bench {' '.join(argv)}".rstrip(),
        f"- device: {dev}" + (f"; peak memory bandwidth {peak:.0f} GB/s" if peak else ""),
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, triton {_triton_version()}, "
        f"CUDA {torch.version.cuda}, spikingjelly {sj_ver}",
        f"- dtypes: {', '.join(dtype_names)}",
    ]


def _triton_version():
    try:
        import triton
        return triton.__version__
    except Exception:
        return "not installed"


COLUMNS = ["op", "shape", "dtype", "impl", "fwd ms", "fwd+bwd ms", "MB moved by Triton (fwd / fwd+bwd)",
           "effective GB/s fwd+bwd", "% peak", "peak mem MB", "x compile", "note"]


def table(rows: list[Row], peak: float | None) -> list[str]:
    """The side-by-side markdown table: one row per (case, dtype, implementation)."""
    out = table_header(COLUMNS, "llllrrrrrrrl")
    by_case = {}
    for r in rows:
        by_case.setdefault((r.op, r.shape, r.dtype), {})[r.impl] = r
    for r in rows:
        gbps = r.bytes_fwdbwd / (r.fwdbwd_ms * 1e-3) / 1e9 if r.fwdbwd_ms else None
        pct = 100 * gbps / peak if (gbps and peak) else None
        comp = by_case[(r.op, r.shape, r.dtype)].get("compile")
        speed = comp.fwdbwd_ms / r.fwdbwd_ms if (comp and comp.fwdbwd_ms and r.fwdbwd_ms) else None
        out.append(table_row([r.op, r.shape, r.dtype, r.impl, fmt(r.fwd_ms, ".3f"), fmt(r.fwdbwd_ms, ".3f"),
                              f"{r.bytes_fwd / 1e6:.1f} / {r.bytes_fwdbwd / 1e6:.1f}", fmt(gbps, ".1f"),
                              fmt(pct, ".1f"), fmt(r.peak_mb, ".0f"), fmt(speed, ".2f"), r.note]))
    return out


def targets(rows: list[Row], peak: float | None) -> list[str]:
    """Issue 3's targets, evaluated on the measured rows (CUDA only)."""
    lines = ["", "## Targets (issue 3)"]
    by_case = {}
    for r in rows:
        by_case.setdefault((r.op, r.shape, r.dtype), {})[r.impl] = r
    for (op, shape, dtype), impls in by_case.items():
        tri = impls.get("triton")
        if tri is None or not tri.fwdbwd_ms:
            continue
        if op in ("lif", "adaptive_spike") and tri.seq >= 16:
            gbps = tri.bytes_fwdbwd / (tri.fwdbwd_ms * 1e-3) / 1e9
            if peak:
                pct = 100 * gbps / peak
                lines.append(f"- {op} {shape} {dtype}: {pct:.1f}% of peak bandwidth (target >= 70%): "
                             f"{'MET' if pct >= 70 else 'NOT MET'}")
            sjs = [r for name, r in impls.items() if name.startswith("sj-") and r.fwdbwd_ms]
            for s in sjs:
                ratio = s.fwdbwd_ms / tri.fwdbwd_ms
                lines.append(f"- {op} {shape} {dtype}: {ratio:.2f}x {s.impl} (target >= 1.5x): "
                             f"{'MET' if ratio >= 1.5 else 'NOT MET'}")
            if op == "lif" and not sjs:
                lines.append(f"- {op} {shape} {dtype}: SpikingJelly not measured (not installed or no GPU backend)")
        if op == "wkv4":
            comp = impls.get("compile")
            if comp and comp.fwdbwd_ms:
                ratio = comp.fwdbwd_ms / tri.fwdbwd_ms
                lines.append(f"- wkv4 {shape} {dtype}: {ratio:.1f}x the compiled reference (target >= 10x): "
                             f"{'MET' if ratio >= 10 else 'NOT MET'}")
    wk = [r for r in rows if r.op == "wkv4" and r.impl == "triton" and r.peak_mb]
    for dtype in sorted({r.dtype for r in wk}):
        rs = sorted((r for r in wk if r.dtype == dtype), key=lambda r: r.seq)
        if len(rs) >= 2:
            a, b = rs[0], rs[-1]
            ratio = (b.peak_mb / b.seq) / (a.peak_mb / a.seq)
            lines.append(f"- wkv4 {dtype}: peak memory per token L={a.seq}: {a.peak_mb / a.seq:.3f} MB, "
                         f"L={b.seq}: {b.peak_mb / b.seq:.3f} MB (ratio {ratio:.2f}; linear in L if ~1): "
                         f"{'MET' if 0.8 <= ratio <= 1.25 else 'NOT MET'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (arguments as on the command line; ``--help`` lists them) and print the table.

    Returns the process exit status (0, or 2 when ``--device cuda`` is asked for without CUDA).
    Writes the same markdown report to ``--out`` when given. Raises nothing for a failing
    implementation: its row carries the error in the ``note`` column.
    """
    argv = sys.argv[1:] if argv is None else argv
    p = make_parser("python -m spikelm.kernels.bench", __doc__)
    p.add_argument("--ops", default="lif,wkv4,adaptive_spike")
    p.add_argument("--dtypes", default=None, help="comma list of fp32,fp16,bf16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--steps", type=int, default=16, help="S for the LIF over simulation steps")
    p.add_argument("--long", type=int, default=None, help="long-context L (default: 4096 on CUDA, none on CPU)")
    p.add_argument("--compile", dest="compile_ref", action=argparse.BooleanOptionalAction, default=None,
                   help="time the torch.compile reference (default: on CUDA only)")
    p.add_argument("--spikingjelly", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--peak-gbps", type=float, default=None)
    parsed = parse(p, argv)
    if parsed is None:
        return 2
    a, device, timer = parsed
    cuda = device.type == "cuda"
    dtype_names = (a.dtypes or ("bf16" if cuda else "fp32")).split(",")
    check_dtypes(p, dtype_names)
    if a.quick:
        a.batch, a.seq, a.dim, a.steps = 2, 64, 96, 16
        long_L = 128 if a.long is None else a.long
    else:
        long_L = a.long if a.long is not None else (4096 if cuda else None)
    compile_ref = a.compile_ref if a.compile_ref is not None else cuda
    peak = peak_gbps(device, a.peak_gbps)
    ops = set(a.ops.split(","))

    lines = header(device, argv, dtype_names, peak)
    if not cuda:
        lines.append("- GPU columns unavailable (no CUDA device): the Triton kernels, SpikingJelly and the "
                     "bandwidth fraction need a GPU; the rows below are the CPU reference path"
                     + ("" if compile_ref else " (torch.compile skipped on CPU; pass --compile)"))
    lines.append("")
    print("\n".join(lines), flush=True)

    rows: list[Row] = []
    for case in build_cases(a.batch, a.seq, a.dim, a.steps, long_L):
        if case.op not in ops:
            continue
        for dn in dtype_names:
            try:
                impls, bf, bfb = case.make(device, DTYPES[dn], compile_ref, a.spikingjelly)
            except Exception as e:
                print(f"# {case.op} {case.label} {dn}: setup failed: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            for name, (fwd, fwdbwd) in impls.items():
                row = Row(case.op, case.label, dn, name, bytes_fwd=bf, bytes_fwdbwd=bfb, seq=case.seq)
                row.fwd_ms, row.fwdbwd_ms, row.peak_mb, row.note = measure(timer, fwd, fwdbwd)
                rows.append(row)
                print(f"# {case.op:14s} {case.label:34s} {dn} {name:12s} fwd {fmt(row.fwd_ms, '9.3f')} ms  "
                      f"fwd+bwd {fmt(row.fwdbwd_ms, '9.3f')} ms {row.note}", file=sys.stderr, flush=True)
            del impls
            if cuda:
                torch.cuda.empty_cache()

    report = table(rows, peak)
    if cuda:
        report += targets(rows, peak)
    print("\n".join(report))
    write_report(a.out, lines + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
