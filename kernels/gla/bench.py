"""Benchmark of the GLA kernels: ``python -m spikelm.kernels.gla.bench [--quick] [--out FILE]``.

Times forward and forward+backward (random upstream gradients on the output and the final
state) of

* ``torch_chunk``: ``torch_chunk.gla_torch_chunk``, the CPU training path;
* ``triton_chunk`` / ``triton_fused_recurrent``: our Triton kernels (CUDA only);
* ``fla_chunk`` / ``fla_fused_recurrent``: flash-linear-attention's ``chunk_gla`` /
  ``fused_recurrent_gla`` when ``fla`` is installed (CUDA only),

at the issue's target shape (B=8, L=2048, H=16, K=V=128, bf16 on CUDA), with the peak memory
of one forward+backward. On CUDA it ends with the target check of issue 4: our chunked
forward+backward at most fla's ``chunk_gla`` time. Without CUDA only the torch row runs
(the Triton kernels would run in the interpreter, which times nothing useful), unless
``--interpret`` asks for the Triton and fla rows in Triton's interpreter at tiny shapes: a
CPU rehearsal of the code path, not a measurement.

Same math in every row. fla 0.6 takes the same layout as ours (``q, k, g [B, T, H, K]``,
``v [B, T, H, V]``, state ``[B, H, K, V]`` float32; no ``head_first``), the same gate
convention (``g`` is the log of the per-channel decay, e.g. ``logsigmoid``) and the same
default scale ``K ** -0.5``. Before any timing, every implementation's output, final state
and gradients (of q, k, v, g and a random initial state) are compared with the float32 torch
reference on the same inputs; the report lists the relative errors, and a row whose results
disagree is flagged (and the target is then not checked).

fla autotunes every kernel over up to 36 configurations, which on a fresh machine takes
minutes (the 2026-11-22 GPU session never saw it finish). ``--fla-max-configs N`` (default 4)
keeps N configurations spread over each fla kernel's list before the first call, so fla
still autotunes, over a smaller space; 0 keeps them all. Our GLA kernels use fixed blocks
(no autotuning), so the cap only ever favours us by hiding a better fla configuration.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from ..bench_harness import (
    check_dtypes,
    fmt,
    fwd_closure,
    fwdbwd_closure,
    make_parser,
    measure,
    parse,
    table_header,
    table_row,
    write_report,
)

AGREE_TOL = {torch.float32: 1e-2, torch.float16: 1e-1, torch.bfloat16: 1e-1}
"""Largest relative error (L2 norm of the difference over the reference's) of any output or
gradient for an implementation to count as agreeing with the float32 torch reference. float32
allows for TF32 tensor-core dots; 16-bit inputs for their rounding, 16-bit dot operands and the
reverse cumulative sum in ``dg``. A different convention (layout, gate base, scale, state
layout) gives errors of order 1, far above these."""

CHECKED = ("o", "h_T", "dq", "dk", "dv", "dg", "dh0")
"""The outputs and gradients compared with the reference, in report order."""


def _spread(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (the first and the last included), in order."""
    if n <= 0 or len(items) <= n:
        return list(items)
    if n == 1:
        return [items[0]]
    picks = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in picks]


def cap_fla_autotune(max_configs: int) -> tuple[int, int, int]:
    """Keep at most ``max_configs`` configurations (spread over the list) in every Triton
    autotuner of the imported ``fla`` modules, so that their first call tunes over a few
    configurations instead of dozens. Autotuners wrapped in ``triton.heuristics`` are found
    through the wrapper. ``max_configs <= 0`` changes nothing.

    Returns ``(autotuned kernels found, configurations before, configurations after)``.
    """
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import KernelInterface

    seen, before, after = set(), 0, 0
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "fla" or name.startswith("fla.")):
            continue
        for obj in list(vars(mod).values()):
            while isinstance(obj, KernelInterface) and not isinstance(obj, Autotuner):
                obj = getattr(obj, "fn", None)  # Heuristics -> Autotuner -> JITFunction
            if not isinstance(obj, Autotuner) or id(obj) in seen:
                continue
            seen.add(id(obj))
            before += len(obj.configs)
            if max_configs > 0:
                obj.configs = _spread(list(obj.configs), max_configs)
            after += len(obj.configs)
    return len(seen), before, after


def _impls(device: torch.device, fused: bool, interpret: bool, fla_max_configs: int, notes: list[str]):
    from .torch_chunk import gla_torch_chunk

    impls = {"torch_chunk": lambda q, k, v, g, h0: gla_torch_chunk(q, k, v, g, None, h0)}
    if device.type == "cuda" or interpret:
        from .chunk import gla_chunk
        from .fused_recurrent import gla_fused_recurrent

        impls["triton_chunk"] = lambda q, k, v, g, h0: gla_chunk(q, k, v, g, None, h0)
        if fused:
            impls["triton_fused_recurrent"] = lambda q, k, v, g, h0: gla_fused_recurrent(q, k, v, g, None, h0)
        try:
            import fla
            from fla.ops.gla import chunk_gla, fused_recurrent_gla
        except Exception as e:  # noqa: BLE001 -- not installed, or an incompatible build
            print(f"# fla unavailable: {type(e).__name__}: {e}", file=sys.stderr)
            notes.append(f"- fla: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        else:
            kernels, before, after = cap_fla_autotune(fla_max_configs)
            notes.append(f"- fla {getattr(fla, '__version__', '?')}: autotuning capped at "
                         f"{fla_max_configs if fla_max_configs > 0 else 'all'} configurations per kernel "
                         f"({kernels} autotuned kernels, {before} -> {after} configurations)")
            impls["fla_chunk"] = lambda q, k, v, g, h0: chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
            if fused:
                impls["fla_fused_recurrent"] = lambda q, k, v, g, h0: fused_recurrent_gla(
                    q, k, v, gk=g, initial_state=h0, output_final_state=True)
    return impls


def _rel(a: torch.Tensor | None, ref: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against ``ref`` (inf when ``a`` is missing or not finite)."""
    if a is None:
        return float("inf")
    a, ref = a.double(), ref.double()
    err = (a - ref).norm().item() / max(ref.norm().item(), 1e-30)
    return err if math.isfinite(err) else float("inf")


def _results(fn, inputs, h0, do, dht) -> dict:
    """Outputs and gradients of one forward+backward of ``fn`` at ``inputs`` (q, k, v, g)."""
    ins = [t.detach().clone().requires_grad_() for t in inputs]
    s0 = h0.detach().clone().requires_grad_()
    o, ht = fn(*ins, s0)
    torch.autograd.backward([o, ht], [do.to(o.dtype), dht.to(ht.dtype)])
    out = dict(zip(("o", "h_T"), (o.detach(), ht.detach())))
    out.update(zip(("dq", "dk", "dv", "dg"), (t.grad for t in ins)))
    out["dh0"] = s0.grad
    return out


def check_agreement(impls: dict, q, k, v, g, do, dht, seed: int = 1) -> dict[str, dict]:
    """Compare every implementation with the float32 torch reference on the benchmark's inputs
    and a random initial state: ``{impl: {name in CHECKED: relative error, "agree": bool,
    "error": message or ""}}``. Raises nothing: an implementation that fails has ``agree``
    False and the error."""
    from .torch_chunk import gla_torch_chunk

    gen = torch.Generator(device=q.device).manual_seed(seed)
    B, _, H, K = q.shape
    h0 = torch.randn(B, H, K, v.shape[-1], device=q.device, generator=gen)
    ref = _results(lambda *a: gla_torch_chunk(*a[:4], None, a[4]), [t.float() for t in (q, k, v, g)],
                   h0, do.float(), dht)
    tol = AGREE_TOL.get(q.dtype, 1e-1)
    report = {}
    for name, fn in impls.items():
        try:
            got = _results(fn, (q, k, v, g), h0, do, dht)
        except Exception as e:  # noqa: BLE001 -- reported in the table
            report[name] = {"agree": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"}
            continue
        errs = {key: _rel(got.get(key), ref[key]) for key in CHECKED}
        report[name] = {**errs, "agree": max(errs.values()) <= tol, "error": ""}
        del got
    del ref
    if q.is_cuda:
        torch.cuda.empty_cache()
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``--help`` lists the options) and print a markdown table; returns 0
    (2 when ``--device cuda`` is asked for without CUDA). A failing implementation's row
    carries the error in its note instead of raising."""
    argv = sys.argv[1:] if argv is None else argv
    p = make_parser("python -m spikelm.kernels.gla.bench", __doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--key-dim", type=int, default=128)
    p.add_argument("--value-dim", type=int, default=128)
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the fused-recurrent (token-by-token) kernels")
    p.add_argument("--fla-max-configs", type=int, default=4,
                   help="autotuning configurations kept per fla kernel (0: all of them)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare every implementation with the float32 torch reference before timing")
    p.add_argument("--interpret", action="store_true",
                   help="CPU only: also run our Triton kernels and fla in Triton's interpreter (tiny shapes, "
                        "fla capped at 1 configuration): rehearses the GPU code path, times nothing useful")
    parsed = parse(p, argv)
    if parsed is None:
        return 2
    a, device, timer = parsed
    cuda = device.type == "cuda"
    interpret = a.interpret and not cuda
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # read when fla's kernels are decorated (at its import)
        a.quick, a.fla_max_configs = True, 1  # the interpreter cannot benchmark configurations
    if a.quick:
        a.batch, a.seq, a.heads, a.key_dim, a.value_dim = 1, 64, 2, 32, 32
    elif not cuda:
        a.batch, a.seq, a.heads = 2, 512, 4
    dn = a.dtype or ("bf16" if cuda else "fp32")
    (dtype,) = check_dtypes(p, [dn])
    B, L, H, K, V = a.batch, a.seq, a.heads, a.key_dim, a.value_dim
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, L, H, K, device=device, generator=gen).to(dtype)
    k = torch.randn(B, L, H, K, device=device, generator=gen).to(dtype)
    v = torch.randn(B, L, H, V, device=device, generator=gen).to(dtype)
    g = (torch.nn.functional.logsigmoid(torch.randn(B, L, H, K, device=device, generator=gen)) / 16).to(dtype)
    h0 = torch.zeros(B, H, K, V, device=device)
    do = torch.randn_like(v)
    dht = torch.randn_like(h0)
    shape = f"B={B}, L={L}, H={H}, K={K}, V={V}"
    notes: list[str] = []
    impls = _impls(device, a.fused, interpret, a.fla_max_configs, notes)
    lines = ["# spikelm GLA kernel benchmark", f"- device: {torch.cuda.get_device_name(device) if cuda else 'CPU'}",
             f"- command: python -m spikelm.kernels.gla.bench {' '.join(argv)}".rstrip(), f"- dtype: {dn}", *notes]
    if interpret:
        lines.append("- Triton interpreter (--interpret): a rehearsal of the code path; the times mean nothing "
                     "(fla's kernels do not run in the interpreter: its row shows the error)")
    print("\n".join(lines), file=sys.stderr, flush=True)

    agreement = check_agreement(impls, q, k, v, g, do, dht) if a.check else {}
    if agreement:
        lines += ["", "## Agreement with the float32 torch reference (before timing)", "",
                  f"Relative L2 error of each output and gradient; agree means all <= {AGREE_TOL.get(dtype, 1e-1):g}.",
                  "", *table_header(["impl", *CHECKED, "agree"], "l" + "r" * len(CHECKED) + "l")]
        for name, r in agreement.items():
            cells = [r["error"]] + [""] * (len(CHECKED) - 1) if r["error"] else [fmt(r[c], ".2e") for c in CHECKED]
            lines.append(table_row([name, *cells, "yes" if r["agree"] else "**NO**"]))
        print("\n".join(lines[-len(agreement) - 2:]), file=sys.stderr, flush=True)

    lines += ["", *table_header(["op", "shape", "dtype", "impl", "fwd ms", "fwd+bwd ms", "peak mem MB", "note"],
                                "llllrrrl")]
    results = {}
    for name, fn in impls.items():
        ins = [t.clone().requires_grad_() for t in (q, k, v, g)]
        fwd_ms, fwdbwd_ms, mem, note = measure(timer, fwd_closure(fn, (q, k, v, g, h0)),
                                               fwdbwd_closure(fn, (*ins, h0), [do, dht]))
        if agreement and not agreement[name]["agree"] and not agreement[name]["error"]:
            note = "; ".join(x for x in ("results disagree with the reference", note) if x)
        results[name] = {"fwd": fwd_ms, "fwdbwd": fwdbwd_ms, "mem": mem, "note": note}
        lines.append(table_row(["gla", shape, dn, name, fmt(fwd_ms, ".3f"), fmt(fwdbwd_ms, ".3f"), fmt(mem, ".0f"),
                                note]))
        print(lines[-1], file=sys.stderr, flush=True)
    if cuda or interpret:
        ours, fla = results.get("triton_chunk"), results.get("fla_chunk")
        lines += ["", "## Target (issue 4)"]
        bad = [f"{n} {'failed' if agreement[n]['error'] else 'disagrees with the reference'}"
               for n in ("triton_chunk", "fla_chunk") if n in agreement and not agreement[n]["agree"]]
        if bad:
            lines.append(f"- {'; '.join(bad)}: target not checked")
        elif ours and fla and ours["fwdbwd"] and fla["fwdbwd"]:
            ratio = ours["fwdbwd"] / fla["fwdbwd"]
            lines.append(f"- chunk fwd+bwd {shape} {dn}: ours {ours['fwdbwd']:.3f} ms, fla {fla['fwdbwd']:.3f} ms: "
                         f"{ratio:.2f}x fla's chunk_gla time (target <= 1.0x): {'MET' if ratio <= 1.0 else 'NOT MET'}"
                         + (" (interpreter: meaningless)" if interpret else ""))
        else:
            lines.append("- fla not measured (not installed or failed): target not checked")
    print("\n".join(lines))
    write_report(a.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
