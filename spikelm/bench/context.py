"""Long-context prefill and decode: ``python -m spikelm.bench.context [--models ...] [--lengths ...]
[--decode-tokens N] [--chunk N] [--threads N] [--timeout-s S] [--out FILE] [--json FILE]``.

Side by side in one run: the SpikeGPT default (flavour ``shakespeare``, RWKV-4 + LIF), the
hybrid (``hybrid-shakespeare``, GLA + SWA) and, as the reference, a transformers
``LlamaForCausalLM`` of the hybrid's size (D=256, 4 layers, 4 heads, SwiGLU 672: within 1% of
its parameters; ``sdpa`` attention). All have vocabulary 512 and seeded random weights (this
measures speed and memory, not quality); fp32 on CPU, bf16 on CUDA; eval mode, inference mode.

For each model and prompt length L: the prefill of one sequence of L random tokens
(``model(ids, use_cache=True, logits_to_keep=1)``; the spikelm models run it in chunks of
``config.prefill_chunk_tokens``, ``--chunk``), its tokens/s and its peak memory, then
``--decode-tokens`` greedy single-token steps fed the returned ``past_key_values`` (SpikeLMCache,
or the Llama's DynamicCache), as tokens/s. Before the timed prefill each point runs an untimed
warm-up (a prefill of min(L, 64) tokens and one decode step), so one-time costs are left out.

Peak memory is "prefill peak memory above the loaded model": on CUDA ``max_memory_allocated()``
after ``reset_peak_memory_stats()`` minus what was allocated before the prefill; on CPU the rise
of ``getrusage(RUSAGE_SELF).ru_maxrss`` over the prefill. ru_maxrss is a process high-water
mark (it never goes down, and memory the warm-up touched and freed is not counted again), so
every (model, L) point runs in a fresh process (``--one MODEL L``, internal), which also
isolates the timings; the models alternate at each L, so other load on the machine falls on
them alike. A point running past ``--timeout-s`` is reported as ``timeout`` (CUDA out
of memory as ``oom``), and the model's longer lengths are then skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import time

import torch

PROG = "python -m spikelm.bench.context"
MODELS = {"shakespeare": "SpikeGPT default (RWKV-4 + LIF)", "hybrid-shakespeare": "hybrid (GLA + SWA)",
          "llama": "transformers Llama (sdpa), reference"}
LLAMA_INTERMEDIATE = 672  # 3,377,408 parameters vs the hybrid's 3,361,664 at vocab 512 (+0.5%)
VOCAB = 512
CPU_LENGTHS = "1k,4k,16k,64k"
CUDA_LENGTHS = "1k,4k,16k,64k,256k,1M"
RESULT = "CONTEXT-BENCH-RESULT "  # the --one child's last stdout line: this, then its JSON


def parse_length(s: str) -> int:
    """``"4096"``, ``"4k"`` (x1024) or ``"1M"`` (x1024^2) -> tokens. Raises ``ValueError`` otherwise or for < 1."""
    s = s.strip()
    n = int(s[:-1]) * {"k": 1024, "K": 1024, "M": 1024 ** 2}[s[-1]] if s[-1:] in "kKM" and s[:-1] else int(s)
    if n < 1:
        raise ValueError(f"length {s!r} must be >= 1")
    return n


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (``--help`` lists it). Bad usage exits 2 with one line (argparse)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--lengths", help=f"prompt lengths, k/M suffixes allowed (default CPU {CPU_LENGTHS}, "
                                     f"CUDA {CUDA_LENGTHS})")
    p.add_argument("--decode-tokens", type=int, default=32, help="greedy decode steps after the prefill (default 32)")
    p.add_argument("--chunk", type=int, help="config.prefill_chunk_tokens of the spikelm models (0 = one shot; "
                                             "default: the config's)")
    p.add_argument("--threads", type=int, help="torch threads per point (default: torch's, all cores)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="limit per point, seconds (default 600)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--json", help="write the raw numbers here (JSON)")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "L"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        p.error(f"--models {','.join(bad) or '(none)'}: unknown; choose from {', '.join(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        args.lengths = sorted({parse_length(s) for s in (args.lengths or (
            CUDA_LENGTHS if args.device == "cuda" else CPU_LENGTHS)).split(",")})
    except ValueError:
        p.error(f"--lengths {args.lengths!r}: expected comma-separated token counts >= 1, e.g. 1024,4k,1M")
    if args.decode_tokens < 1 or (args.chunk is not None and args.chunk < 0) or (args.threads or 1) < 1 \
            or args.timeout_s <= 0:
        p.error("--decode-tokens and --threads must be >= 1, --chunk >= 0, --timeout-s > 0")
    if args.chunk is None:
        from ..models import SpikeLMConfig

        args.chunk = SpikeLMConfig().prefill_chunk_tokens
    return args


def build_model(name: str, max_len: int, chunk: int, device: torch.device, dtype: torch.dtype):
    """The model ``name`` (a key of :data:`MODELS`) with seeded random weights, vocabulary 512 and
    ``max_position_embeddings = max_len``, in eval mode on ``device`` in ``dtype``; the spikelm
    ones with ``prefill_chunk_tokens = chunk``. Raises ``ValueError`` for an unknown name."""
    from ..train.archs import build_config, causal_lm_class

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if name == "llama":
        config = build_config("llama", "llama-shakespeare", {"intermediate_size": LLAMA_INTERMEDIATE,
                                                             "attn_implementation": "sdpa"}, VOCAB, max_len, 0, 0, 0)
    else:
        config = build_config("spikelm", name, {"prefill_chunk_tokens": chunk}, VOCAB, max_len, 0, 0, 0)
    torch.manual_seed(0)
    return causal_lm_class(config)(config).to(device=device, dtype=dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _decode(model, logits, cache, steps: int, device: torch.device):
    """``steps`` greedy single-token steps from ``logits [1, 1, V]`` and ``cache``; returns the last cache."""
    for _ in range(steps):
        out = model(logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True)
        logits, cache = out.logits, out.past_key_values
    _sync(device)
    return cache


def measure_point(name: str, length: int, decode_tokens: int, chunk: int, device: str = "cpu") -> dict:
    """One (model, L) point in this process: ``{"status": "ok", "params", "prefill_s",
    "prefill_tokens_per_s", "peak_mib" (prefill peak above the loaded model and input), "decode_tokens_per_s",
    "dtype", "threads"}``. CPU peak memory is meaningful only in a fresh process (ru_maxrss)."""
    from ..train.engine import resolve_precision

    dev = torch.device(device)
    dtype = torch.bfloat16 if resolve_precision("auto", dev) == "bf16" else torch.float32
    model = build_model(name, length + decode_tokens + 1, chunk, dev, dtype)
    gen = torch.Generator().manual_seed(length)
    ids = torch.randint(0, VOCAB, (1, length), generator=gen).to(dev)
    with torch.inference_mode():
        warm = model(ids[:, :min(length, 64)], use_cache=True, logits_to_keep=1)
        _decode(model, warm.logits, warm.past_key_values, 1, dev)
        del warm
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else _peak_bytes(dev)
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        _sync(dev)
        prefill_s = time.perf_counter() - t0
        peak = max(_peak_bytes(dev) - base, 0)
        t0 = time.perf_counter()
        _decode(model, out.logits, out.past_key_values, decode_tokens, dev)
        decode_s = time.perf_counter() - t0
    return {"status": "ok", "params": sum(p.numel() for p in model.parameters()), "prefill_s": prefill_s,
            "prefill_tokens_per_s": length / prefill_s, "peak_mib": peak / 2 ** 20,
            "decode_tokens_per_s": decode_tokens / decode_s, "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads()}


def run_point(name: str, length: int, args) -> dict:
    """:func:`measure_point` in a fresh ``--one`` subprocess limited to ``args.timeout_s`` seconds:
    its dict, or ``{"status": "timeout"}``, ``{"status": "oom"}`` or ``{"status": "error", "error": line}``."""
    cmd = [sys.executable, "-m", "spikelm.bench.context", "--one", name, str(length), "--device", args.device,
           f"--decode-tokens={args.decode_tokens}", f"--chunk={args.chunk}"]
    env = dict(os.environ)
    if args.threads:
        cmd.append(f"--threads={args.threads}")
        env["OMP_NUM_THREADS"] = str(args.threads)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1][len(RESULT):])
    if proc.returncode < 0:
        return {"status": "error", "error": f"killed by signal {-proc.returncode} (out of memory?)"}
    tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
    return {"status": "error", "error": f"exit {proc.returncode}: {tail[0][:300]}"}


def run_one(args) -> int:
    """The ``--one MODEL L`` child: print :data:`RESULT` and the point's JSON (``oom`` on CUDA out of memory)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    name, length = args.one[0], parse_length(args.one[1])
    try:
        res = measure_point(name, length, args.decode_tokens, args.chunk, args.device)
    except torch.cuda.OutOfMemoryError:
        res = {"status": "oom"}
    print(RESULT + json.dumps(res), flush=True)
    return 0


def _get(res: dict, model: str, length: int, key: str):
    p = res["points"].get(model, {}).get(str(length), {})
    return p.get(key) if p.get("status") == "ok" else None


def _target(name: str, what: str, num, den, unit: str, fmt: str, goal: str, ok, bound: bool = False) -> dict:
    """One target line: ``num / den`` (None = n/a; ``bound``: ``num`` is only a lower bound)."""
    value = num / den if num is not None and den else None
    met = None if value is None else bool(ok(value))
    shown = "n/a" if value is None else f"{num:{fmt}}{unit} / {den:{fmt}}{unit} = {'> ' * bound}{value:.3g}"
    verdict = "" if met is None else ": **met**" if met else ": **not met**"
    return {"name": name, "value": value, "met": met, "text": f"{what}: {shown} (target {goal}){verdict}"}


def targets(res: dict) -> list[dict]:
    """The issue's three targets from ``res["points"]`` (``{model: {str(L): point}}``) and
    ``res["timeout_s"]``: ``[{"name", "text", "value" (None = n/a), "met" (None = n/a)}]``.
    (a) Llama prefill time / the hybrid's at 16k (>= 3; a Llama timeout gives the lower bound
    ``timeout_s / hybrid``); (b) hybrid decode tokens/s after a 16k prefill / after a 1k one
    (>= 0.95); (c) per spiking model present, prefill peak MiB at 64k / at 4k (<= 2)."""
    k, hyb = 1024, "hybrid-shakespeare"
    llama16 = res["points"].get("llama", {}).get(str(16 * k), {})
    bound = llama16.get("status") == "timeout" or str(llama16.get("why", "")).startswith("timeout")
    out = [_target("a", "(a) prefill at 16k, Llama s / hybrid s" + (" (Llama timed out: the timeout is a lower "
                   "bound)" if bound else ""), res["timeout_s"] if bound else
                   _get(res, "llama", 16 * k, "prefill_s"), _get(res, hyb, 16 * k, "prefill_s"), " s", ".2f",
                   ">= 3x faster", lambda v: v >= 3, bound),
           _target("b", "(b) hybrid decode tokens/s after a 16k prefill / after a 1k prefill",
                   _get(res, hyb, 16 * k, "decode_tokens_per_s"), _get(res, hyb, k, "decode_tokens_per_s"), "",
                   ".1f", ">= 0.95", lambda v: v >= 0.95)]
    for m in ("shakespeare", hyb):
        if m in res["points"]:
            out.append(_target(f"c {m}", f"(c) {m} prefill peak memory at 64k / at 4k",
                               _get(res, m, 64 * k, "peak_mib"), _get(res, m, 4 * k, "peak_mib"), " MiB", ",.1f",
                               "<= 2x", lambda v: v <= 2))
    return out


def _versions() -> str:
    """Like ``step._versions`` (the bench's own packages), read from the package metadata: no import."""
    from importlib import metadata

    found = []
    for name in ("torch", "triton", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def _threads(res: dict) -> str:
    used = sorted({p["threads"] for ps in res["points"].values() for p in ps.values() if "threads" in p})
    return ", ".join(map(str, used)) or str(res["threads"] or "torch default")


def render(res: dict) -> str:
    """The markdown report of a run (``res`` as :func:`main` builds it: header fields, ``points``)."""
    lines = ["# Long-context bench: prefill and decode", "", f"- command: `{res['command']}`",
             f"- date: {res['date']}", f"- device: {res['device']}", f"- software: {res['versions']}",
             f"- code: {res['code']}",
             (f"- prefill chunk (config.prefill_chunk_tokens, spikelm models): {res['chunk'] or 'one shot'}"
              f"{' tokens' if res['chunk'] else ''}; decode: {res['decode_tokens']} greedy tokens; "
              f"threads per point: {_threads(res)}; timeout per point: {res['timeout_s']:g} s"),
             "- peak memory: prefill peak above the loaded model (CPU: ru_maxrss rise, one process per point; "
             "CUDA: max_memory_allocated)"]
    for model, points in res["points"].items():
        first = next((p for p in points.values() if p.get("status") == "ok"), {})
        size = f", {first['params'] / 1e6:.2f}M parameters, {first['dtype']}" if first else ""
        lines += ["", f"## {model}: {MODELS[model]}{size}", "",
                  "| L | prefill s | prefill tokens/s | peak MiB | decode tokens/s |", "|---|---|---|---|---|"]
        for length, p in points.items():
            if p["status"] != "ok":
                why = p.get("error") or p.get("why") or ""
                lines.append(f"| {int(length):,} | {p['status']}{': ' + why if why else ''} | | | |")
                continue
            lines.append(f"| {int(length):,} | {p['prefill_s']:.3f} | {p['prefill_tokens_per_s']:,.0f} | "
                         f"{p['peak_mib']:,.1f} | {p['decode_tokens_per_s']:,.1f} |")
    lines += ["", "## Targets", ""] + [f"- {t['text']}" for t in res["targets"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the bench (module docstring); returns the exit status (2 for bad input, one line on stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.one:
        return run_one(args)
    from .step import _code_version, _device_name
    from .step_report import emit

    res = {"command": " ".join([PROG] + [shlex.quote(a) for a in argv]),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": _device_name() if args.device == "cuda" or not torch.cuda.is_available() else
           f"CPU ({os.cpu_count()} cores)",
           "versions": _versions(), "code": _code_version(), "chunk": args.chunk, "decode_tokens": args.decode_tokens,
           "threads": args.threads, "timeout_s": args.timeout_s, "lengths": args.lengths, "points": {}}
    stop = dict.fromkeys(args.models)  # why a model's longer lengths are skipped
    for model in args.models:
        res["points"][model] = {}
    for length in args.lengths:  # the models alternate, so the same L is measured close in time
        for model in args.models:
            p = {"status": "skipped", "why": stop[model]} if stop[model] else run_point(model, length, args)
            res["points"][model][str(length)] = p
            if p["status"] in ("timeout", "oom") and not stop[model]:
                stop[model] = f"{p['status']} at {length:,}"
            took = f" (prefill {p['prefill_s']:.2f} s)" if p["status"] == "ok" else ""
            print(f"{PROG}: {model} L={length}: {p['status']}{took}", file=sys.stderr, flush=True)
    res["targets"] = targets(res)
    emit(render(res), res, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
