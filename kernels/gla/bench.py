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

from ..bench import DTYPES, Timer, _fmt


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
    p = argparse.ArgumentParser(prog="python -m spikelm.kernels.gla.bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--key-dim", type=int, default=128)
    p.add_argument("--value-dim", type=int, default=128)
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the fused-recurrent (token-by-token) kernels")
    p.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    if a.quick:
        a.batch, a.seq, a.heads, a.key_dim, a.value_dim = 1, 64, 2, 32, 32
    elif not cuda:
        a.batch, a.seq, a.heads = 2, 512, 4
    dn = a.dtype or ("bf16" if cuda else "fp32")
    if dn not in DTYPES:
        p.error(f"unknown dtype {dn!r}; accepted: {', '.join(DTYPES)}")
    dtype = DTYPES[dn]
    timer = Timer(device, a.reps or (20 if cuda else 3), a.warmup if a.warmup is not None else (3 if cuda else 1))
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
             "| op | shape | dtype | impl | fwd ms | fwd+bwd ms | peak mem MB | note |", "|---|---|---|---|---:|---:|---:|---|"]
    results = {}
    for name, fn in _impls(device, a.fused).items():
        ins = [t.clone().requires_grad_() for t in (q, k, v, g)]

        def fwd(fn=fn):
            with torch.no_grad():
                fn(q, k, v, g, h0)

        def fwdbwd(fn=fn, ins=ins):
            o, ht = fn(*ins, h0)
            torch.autograd.backward([o, ht], [do, dht])
            for t in ins:
                t.grad = None
        row = dict(fwd=None, fwdbwd=None, mem=None, note="")
        try:
            row["fwd"] = timer(fwd)
            row["fwdbwd"] = timer(fwdbwd)
            row["mem"] = timer.peak_mb(fwdbwd)
        except Exception as e:
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        results[name] = row
        lines.append(f"| gla | {shape} | {dn} | {name} | {_fmt(row['fwd'], '.3f')} | {_fmt(row['fwdbwd'], '.3f')} | "
                     f"{_fmt(row['mem'], '.0f')} | {row['note']} |")
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
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
