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
import importlib.metadata
import os
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
                for name, sj_fn in _spikingjelly_lifs(device, N):
                    impls[f"sj-{name}"] = (fwd_closure(sj_fn, (x,)), fwdbwd_closure(sj_fn, (xg,), [gs]))
        return impls, bytes_fwd, bytes_fwdbwd

    return Case("lif", label, T, make)


def _lif_step(x_t, v):
    from .lif.surrogate import heaviside

    h = v + (x_t - v) / 2.0
    s = heaviside(h - 1.0, "atan", 2.0)
    return s, h * (1 - s)


def _spikingjelly_lifs(device, n: int):
    """``(name, fn)`` pairs: SpikingJelly's multi-step LIF on ``device``, ``fn(x [T, n]) -> spikes``,
    the same neuron as our rows (tau 2, decay_input, threshold 1, hard reset to 0, ATan surrogate
    with alpha 2, reset not detached), each tried once at a tiny size first.

    SpikingJelly 2.x: ``functional.lif_multi_step`` with a float32 initial voltage (its
    ``LIFNode`` keeps the voltage in the input's dtype, and with a bf16/fp16 voltage it silently
    runs its torch reference instead of a kernel). Its CUDA implementation is chosen by the
    environment variable ``SJ_LIF_CUDA_IMPLEMENTATION`` (auto, cuda, triton, torch), read when
    spikingjelly is imported: this sets it to ``triton`` unless it is set already (the PyPI
    wheel has no compiled CUDA ops), and names the row after the implementation SpikingJelly
    reports (``sj-triton``). SpikingJelly <= 0.0.0.0.14: ``LIFNode(backend="triton" / "cupy")``.
    """
    os.environ.setdefault("SJ_LIF_CUDA_IMPLEMENTATION", "triton")
    try:
        from spikingjelly.activation_based import functional, neuron, surrogate
    except Exception as e:  # noqa: BLE001 -- not installed, or a missing dependency of it
        print(f"# spikingjelly unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        return []
    if hasattr(functional, "lif_multi_step"):  # 2.x
        v0 = torch.zeros(n, device=device)

        def lif(x, v0=v0):
            return functional.lif_multi_step(x, v0[: x[0].numel()].view(x.shape[1:]), 2.0, True, 1.0, 0.0,
                                             surrogate.ATan(alpha=2.0), False)[0]
        try:
            lif(torch.zeros(2, 8, device=device))
            name = functional.neuron_implementation("lif", device)["implementation"] \
                if device.type == "cuda" else "cpu"
        except Exception as e:  # noqa: BLE001 -- the chosen implementation is missing or unsupported here
            print(f"# spikingjelly lif_multi_step unavailable: {type(e).__name__}: {e}", file=sys.stderr)
            return []
        return [(name, lif)]
    found = []
    for backend in ("triton", "cupy"):
        kw = {"tau": 2.0, "decay_input": True, "v_threshold": 1.0, "v_reset": 0.0, "surrogate_function": surrogate.ATan(),
              "detach_reset": False, "step_mode": "m", "backend": backend}
        try:
            node = neuron.LIFNode(**kw).to(device)
            node(torch.zeros(2, 8, device=device))
            _sj_reset(node)
        except Exception as e:  # noqa: BLE001 -- backend missing or unsupported here
            print(f"# spikingjelly backend {backend!r} unavailable: {type(e).__name__}: {e}", file=sys.stderr)
            continue

        def run(x, node=node):
            _sj_reset(node)
            return node(x)
        found.append((backend, run))
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


def token_shift_mix_case(B: int, L: int, D: int, label: str) -> Case:
    """Token shift + the three time-mix lerps (``kernels/token_shift``): ``torch`` is the unfused
    eager sequence it replaces (``cat`` + 3 ``lerp``), ``triton`` the fused kernel (CUDA)."""
    def make(device, dtype, compile_ref, sj):
        from .token_shift.fused import token_shift_mix_fused
        from .token_shift.naive import token_shift_mix_naive

        x = torch.randn(B, L, D, device=device).to(dtype)
        mus = [torch.rand(D, device=device).requires_grad_() for _ in range(3)]
        gs = [torch.randn(B, L, D, device=device).to(dtype) for _ in range(3)]
        xg = x.clone().requires_grad_()
        xb, n = x.element_size(), B * L * D
        # fwd reads x once and writes 3 outputs; bwd reads x and 3 gradients, writes dx (+ O(D) partials)
        bytes_fwd = 4 * n * xb
        bytes_fwdbwd = bytes_fwd + 5 * n * xb
        impls = {}
        ref = lambda x, a, b, c: token_shift_mix_naive(x, None, (a, b, c))
        impls["torch"] = (fwd_closure(ref, (x, *mus)), fwdbwd_closure(ref, (xg, *mus), gs))
        if compile_ref:
            cfn = torch.compile(ref)
            impls["compile"] = (fwd_closure(cfn, (x, *mus)), fwdbwd_closure(cfn, (xg, *mus), gs))
        if device.type == "cuda":
            tri = lambda x, a, b, c: token_shift_mix_fused(x, None, (a, b, c))
            impls["triton"] = (fwd_closure(tri, (x, *mus)), fwdbwd_closure(tri, (xg, *mus), gs))
        return impls, bytes_fwd, bytes_fwdbwd

    return Case("token_shift_mix", label, L, make)


def wkv4_gated_case(B: int, L: int, D: int, label: str) -> Case:
    """``sigmoid(r) * wkv`` (``kernels/wkv4/gated.py``): ``torch`` is the unfused CPU path (WKV
    torch loop, then ``sigmoid`` and ``mul``), ``triton-unfused`` the ungated WKV kernel followed
    by the same two ops, ``triton`` the kernel with the gate in its epilogue (both CUDA)."""
    def make(device, dtype, compile_ref, sj):
        from .wkv4.fused_recurrent import (
            wkv4_fused_recurrent,
            wkv4_gated_fused_recurrent,
        )
        from .wkv4.torch_loop import wkv4_torch_loop

        w = (torch.rand(D, device=device) * 2 + 0.05).requires_grad_()
        u = torch.randn(D, device=device).requires_grad_()
        k, v, r = ((torch.randn(B, L, D, device=device) * s).to(dtype) for s in (2, 1, 2))
        gy = torch.randn(B, L, D, device=device).to(dtype)
        kg, vg, rg = (t.clone().requires_grad_() for t in (k, v, r))
        xb, n = k.element_size(), B * L * D
        # fwd reads k, v, r and writes out (training: + the fp32 entering state); bwd reads k, v,
        # r, gy and the saved state, writes gk, gv, gr (plus O(B*D) state/partials)
        bytes_fwd = 4 * n * xb + 6 * 4 * B * D
        bytes_fwdbwd = n * (4 * xb + 12) + n * (7 * xb + 12) + 12 * 4 * B * D
        impls = {}
        unf = lambda w, u, k, v, r: torch.sigmoid(r) * wkv4_torch_loop(w, u, k, v)[0].to(r.dtype)
        impls["torch"] = (fwd_closure(unf, (w, u, k, v, r)), fwdbwd_closure(unf, (w, u, kg, vg, rg), [gy]))
        if device.type == "cuda":
            unf_t = lambda w, u, k, v, r: torch.sigmoid(r) * wkv4_fused_recurrent(w, u, k, v)[0].to(r.dtype)
            tri = lambda w, u, k, v, r: wkv4_gated_fused_recurrent(w, u, k, v, r)[0]
            for name, fn in (("triton-unfused", unf_t), ("triton", tri)):
                impls[name] = (fwd_closure(fn, (w, u, k, v, r)), fwdbwd_closure(fn, (w, u, kg, vg, rg), [gy]))
        return impls, bytes_fwd, bytes_fwdbwd

    return Case("wkv4_gated", label, L, make)


def lif_residual_case(B: int, L: int, D: int, label: str) -> Case:
    """``res + LIF(x)`` along the tokens of ``[B, L, D]`` and the spike rate
    (``kernels/lif/residual.py``): ``torch`` is the unfused CPU path (transpose, LIF torch loop,
    transpose, add, mean), ``triton-unfused`` the same around the LIF kernel, ``triton`` the
    fused kernel (both CUDA)."""
    def make(device, dtype, compile_ref, sj):
        from .lif.fused_recurrent import lif_fused_recurrent
        from .lif.fused_residual import lif_residual_fused
        from .lif.residual import lif_residual

        x = (torch.randn(B, L, D, device=device) * 1.5 + 0.6).to(dtype)
        res = torch.randn(B, L, D, device=device).to(dtype)
        gy = torch.randn(B, L, D, device=device).to(dtype)
        xg, resg = x.clone().requires_grad_(), res.clone().requires_grad_()
        xb, n = x.element_size(), B * L * D
        # fwd reads x, res, writes y (training: + h fp32); bwd reads h and dy, writes dx
        bytes_fwd = 3 * n * xb
        bytes_fwdbwd = n * (3 * xb + 4) + n * (2 * xb + 4)
        impls = {}
        ref = lambda res, x: lif_residual(res, x, time_dim=1, backend="torch")
        impls["torch"] = (fwd_closure(ref, (res, x)), fwdbwd_closure(ref, (resg, xg), [gy]))
        if device.type == "cuda":
            def unf_t(res, x):
                v0 = torch.zeros(B * D, device=x.device)
                s, v = lif_fused_recurrent(x.transpose(0, 1).contiguous().reshape(L, B * D), v0)
                s = s.reshape(L, B, D).transpose(0, 1)
                return res + s, v, s.detach().float().mean()

            tri = lambda res, x: lif_residual_fused(res, x, None)
            for name, fn in (("triton-unfused", unf_t), ("triton", tri)):
                impls[name] = (fwd_closure(fn, (res, x)), fwdbwd_closure(fn, (resg, xg), [gy]))
        return impls, bytes_fwd, bytes_fwdbwd

    return Case("lif_residual", label, L, make)


def build_cases(B: int, L: int, D: int, S: int, long_L: int | None) -> list[Case]:
    cases = []
    for Lx in [L] + ([long_L] if long_L else []):
        cases.append(lif_case(Lx, B * D, f"tokens T=L={Lx}, N=B*D={B * D}"))
    cases.append(lif_case(S, B * L * D, f"steps T=S={S}, N=B*L*D={B * L * D}"))
    for Lx in [L] + ([long_L] if long_L else []):
        cases.append(wkv4_case(B, Lx, D, f"B={B}, L={Lx}, D={D}"))
    for Lx in [L] + ([long_L] if long_L else []):
        cases.append(adaptive_case(B * Lx, D, f"[B*L={B * Lx}, D={D}]", seq=Lx))
    # the fused ops of issue 15 (run with --ops token_shift_mix,wkv4_gated,lif_residual), each
    # side by side with the unfused sequence it replaces
    cases.append(token_shift_mix_case(B, L, D, f"B={B}, L={L}, D={D}, 3 mixes"))
    cases.append(wkv4_gated_case(B, L, D, f"B={B}, L={L}, D={D}"))
    cases.append(lif_residual_case(B, L, D, f"[B={B}, L={L}, D={D}], T=L"))
    return cases


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def header(device: torch.device, argv: list[str], dtype_names: list[str], peak: float | None) -> list[str]:
    import triton  # noqa: F401  (version line)

    try:
        import spikingjelly
        sj_ver = getattr(spikingjelly, "__version__", None) or importlib.metadata.version("spikingjelly")
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
