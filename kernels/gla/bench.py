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
(the Triton kernels would run in the interpreter, which times nothing useful).
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..bench_harness import (check_dtypes, fmt, fwd_closure, fwdbwd_closure, make_parser,
                             measure, parse, table_header, table_row, write_report)


def _impls(device: torch.device, fused: bool):
    from .torch_chunk import gla_torch_chunk

    impls = {"torch_chunk": lambda q, k, v, g, h0: gla_torch_chunk(q, k, v, g, None, h0)}
    if device.type == "cuda":
        from .chunk import gla_chunk
        from .fused_recurrent import gla_fused_recurrent

        impls["triton_chunk"] = lambda q, k, v, g, h0: gla_chunk(q, k, v, g, None, h0)
        if fused:
            impls["triton_fused_recurrent"] = lambda q, k, v, g, h0: gla_fused_recurrent(q, k, v, g, None, h0)
        try:
            from fla.ops.gla import chunk_gla, fused_recurrent_gla
        except Exception as e:  # not installed, or an incompatible build
            print(f"# fla unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        else:
            impls["fla_chunk"] = lambda q, k, v, g, h0: chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)
            if fused:
                impls["fla_fused_recurrent"] = lambda q, k, v, g, h0: fused_recurrent_gla(
                    q, k, v, gk=g, initial_state=h0, output_final_state=True)
    return impls


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
    parsed = parse(p, argv)
    if parsed is None:
        return 2
    a, device, timer = parsed
    cuda = device.type == "cuda"
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
    lines = ["# spikelm GLA kernel benchmark", f"- device: {torch.cuda.get_device_name(device) if cuda else 'CPU'}",
             f"- command: python -m spikelm.kernels.gla.bench {' '.join(argv)}".rstrip(), f"- dtype: {dn}", "",
             *table_header(["op", "shape", "dtype", "impl", "fwd ms", "fwd+bwd ms", "peak mem MB", "note"], "llllrrrl")]
    results = {}
    for name, fn in _impls(device, a.fused).items():
        ins = [t.clone().requires_grad_() for t in (q, k, v, g)]
        fwd_ms, fwdbwd_ms, mem, note = measure(timer, fwd_closure(fn, (q, k, v, g, h0)),
                                               fwdbwd_closure(fn, (*ins, h0), [do, dht]))
        results[name] = dict(fwd=fwd_ms, fwdbwd=fwdbwd_ms, mem=mem, note=note)
        lines.append(table_row(["gla", shape, dn, name, fmt(fwd_ms, ".3f"), fmt(fwdbwd_ms, ".3f"), fmt(mem, ".0f"),
                                note]))
        print(lines[-1], file=sys.stderr, flush=True)
    if cuda:
        ours, fla = results.get("triton_chunk"), results.get("fla_chunk")
        lines += ["", "## Target (issue 4)"]
        if ours and fla and ours["fwdbwd"] and fla["fwdbwd"]:
            ratio = ours["fwdbwd"] / fla["fwdbwd"]
            lines.append(f"- chunk fwd+bwd {shape} {dn}: {ratio:.2f}x fla's chunk_gla time (target <= 1.0x): "
                         f"{'MET' if ratio <= 1.0 else 'NOT MET'}")
        else:
            lines.append("- fla not measured (not installed or failed): target not checked")
    print("\n".join(lines))
    write_report(a.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
