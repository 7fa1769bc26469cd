"""Data-parallel scaling on CPU: ``python -m spikelm.bench.scaling RECIPE [--ranks 2] [--steps N]``.

Training tokens/s of 1 single-thread CPU rank and of ``--ranks`` single-thread ranks
(``torch.distributed.run``, gloo, ``OMP_NUM_THREADS=1``, ``train.threads=1``; each rank keeps
the recipe's micro-batch, so the global batch grows with the ranks), each measured by
``spikelm.bench.step --timing-only``, for the recipe and, as the reference in the same run,
its ANN baseline of the same size (``ann-<recipe>``: a transformers Llama). Prints the speedup
``tokens/s(ranks) / tokens/s(1)`` side by side (markdown; ``--out``/``--json`` write it too).
The 1-rank and N-rank runs alternate ``--repeat`` times and the fastest of each counts, so a
burst of other work on the machine does not decide the ratio.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

PROG = "python -m spikelm.bench.scaling"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; bad usage exits 2 with one line (argparse)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", nargs="?", default="shakespeare")
    p.add_argument("--ranks", type=int, default=2, help="ranks of the parallel run (default 2)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per run (default 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2,
                   help="runs per configuration, 1 and N ranks alternating; the fastest counts (default 2)")
    p.add_argument("--baseline", help="reference recipe (default ann-RECIPE when shipped; 'none' for none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--json", help="write the raw numbers here")
    args = p.parse_args(argv)
    if args.ranks < 2 or args.steps < 1 or args.warmup < 0 or args.repeat < 1:
        p.error("--ranks must be >= 2, --steps and --repeat >= 1, --warmup >= 0")
    return args


def default_baseline(recipe: str) -> str | None:
    """``ann-<recipe>`` when it is a shipped recipe, else None."""
    from ..recipes import shipped_recipes

    name = f"ann-{recipe}"
    return name if name in shipped_recipes() else None


def measure(recipe: str, ranks: int, args, workdir: str) -> dict:
    """Run ``spikelm.bench.step --timing-only`` on ``ranks`` single-thread ranks; returns its JSON
    (``eager.tokens_per_s``: tokens/s over all ranks). Raises ``RuntimeError`` (with the last
    output line) when the run fails."""
    out = os.path.join(workdir, f"{recipe}-{ranks}.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "spikelm.bench.step", recipe, "--timing-only", f"--steps={args.steps}", f"--warmup={args.warmup}",
           "--set", "train.threads=1", "--run-dir", os.path.join(workdir, f"{recipe}-{ranks}"), "--json", out]
    for s in args.set:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not os.path.exists(out):
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{recipe} on {ranks} rank(s) failed (exit {proc.returncode}): {tail[0]}")
    with open(out) as f:
        return json.load(f)


def render(res: dict) -> str:
    """Markdown: one row per recipe, tokens/s at 1 and N ranks and the speedup."""
    n = res["ranks"]
    lines = ["# Data-parallel scaling (CPU, single-thread ranks)", "", f"- command: `{res['command']}`",
             f"- date: {res['date']}", f"- machine: {res['machine']}",
             (f"- load average (1 min) before / after: {res['load'][0]:.2f} / {res['load'][1]:.2f} (this bench "
              f"adds up to {n}; more means other work shared the {os.cpu_count()} cores)"), "",
             f"| recipe | model | tokens/s, 1 rank | tokens/s, {n} ranks | speedup | every run (1 rank; {n} ranks) |",
             "|---|---|---|---|---|---|"]
    for name, r in res["recipes"].items():
        runs = "; ".join(", ".join(f"{t:,.0f}" for t in ts) for ts in r["all_tokens_per_s"])
        lines.append(f"| {name} | {r['model']} | {r['tokens_per_s'][0]:,.0f} | {r['tokens_per_s'][1]:,.0f} | "
                     f"**{r['speedup']:.2f}x** | {runs} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the scaling bench (module docstring); returns the exit status (2 for bad input)."""
    from ..cli.errors import CLIError
    from ..cli.recipe import resolve_recipe

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    baseline = default_baseline(args.recipe) if args.baseline is None else \
        None if args.baseline == "none" else args.baseline
    try:
        for name in filter(None, (args.recipe, baseline)):
            resolve_recipe(name)
    except CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    res = {"command": " ".join([PROG, *argv]), "ranks": args.ranks, "machine": f"{os.cpu_count()} CPU cores",
           "load": [os.getloadavg()[0]],
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "recipes": {}}
    with tempfile.TemporaryDirectory(prefix="spikelm-scaling-") as workdir:
        for name in filter(None, (args.recipe, baseline)):
            try:
                reps = [[measure(name, k, args, workdir) for k in (1, args.ranks)] for _ in range(args.repeat)]
                runs = [list(rs) for rs in zip(*reps)]  # [configuration][repeat], measured alternately
            except RuntimeError as e:
                print(f"{PROG}: error: {e}", file=sys.stderr)
                return 1
            tok = [max(r["eager"]["tokens_per_s"] for r in rs) for rs in runs]
            res["recipes"][name] = {"model": runs[0][0]["eager"]["context"]["model"], "tokens_per_s": tok,
                                    "speedup": tok[1] / tok[0],
                                    "all_tokens_per_s": [[r["eager"]["tokens_per_s"] for r in rs] for rs in runs]}
    res["load"].append(os.getloadavg()[0])
    from .step_report import emit

    emit(render(res), res, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
