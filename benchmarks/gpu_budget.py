"""Helpers of ``benchmarks/gpu.sh``: the offline tokenizer, the training report and the summary.

``python benchmarks/gpu_budget.py tokenizer OUT_DIR --size 50277 [--base 8192]``
    A byte-level BPE trained on the shipped tiny Shakespeare (``--base`` entries), padded with
    unused added tokens to ``--size`` entries, saved with ``save_pretrained``. The big recipes
    name the GPT-NeoX tokenizer from the Hugging Face hub, which the GPU machine cannot reach;
    this one gives their models the real embedding and output sizes (vocabulary 50,277), so
    their FLOPs and MFU are those of the real shapes. Imports spikelm (torch, transformers).

``python benchmarks/gpu_budget.py train-report OUT_MD NAME=RUN_DIR ... [--window-start 10] [--target 0.35]``
    A markdown table of the training runs from each run directory's ``metrics.jsonl`` (one
    record per optimizer step) and ``final/training_summary.json`` (when the run finished):
    steps done, tokens per step, steady-state tokens/s and MFU over the steps after
    ``--window-start`` (the first steps hold the Triton JIT, autotuning and torch.compile), the
    trainer's own whole-loop MFU, and whether the steady MFU meets ``--target``. Standard
    library only, so it also works when a run was cut off by its time budget.

``python benchmarks/gpu_budget.py summary WORK OUT_MD``
    ``summary.md``: the stage table (stage, seconds, rc, budget, status) from
    ``WORK/stages.tsv``, the target lines, then every table gpu.sh wrote (``WORK/tables/*.md``).
    Standard library only.

Steady-state numbers. The trainer logs, for step ``s``, ``elapsed_s`` (seconds since the loop
began, before that step's evaluation and checkpoint) and ``mfu`` / ``tokens_per_s`` over the
whole loop so far. Between steps ``a < b``: ``tokens/s = tokens_per_step * (b - a) /
(elapsed_b - elapsed_a)`` with ``tokens_per_step = tokens_per_s_b * elapsed_b / b``, and
``MFU = mfu_b * elapsed_b / b * (b - a) / (elapsed_b - elapsed_a)`` (the same FLOPs per token
and peak as the trainer's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def make_tokenizer(out: str, size: int, base: int, max_length: int = 10**9) -> int:
    """Train the ``base``-entry BPE on tiny Shakespeare, pad it to ``size`` entries, save it to ``out``."""
    from spikelm.data import tiny_shakespeare_path, train_bpe_tokenizer_from_iterator

    text = Path(tiny_shakespeare_path()).read_text()
    tok = train_bpe_tokenizer_from_iterator([text], min(base, size), max_length)
    pad = size - len(tok)
    if pad > 0:
        tok.add_tokens([f"<|unused{i}|>" for i in range(pad)], special_tokens=True)
    tok.save_pretrained(out)
    print(f"tokenizer: {len(tok)} entries ({len(tok) - max(pad, 0)} BPE + {max(pad, 0)} unused) in {out}")
    return 0


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by the time budget
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec.get("elapsed_s"):
            out.append(rec)
    return out


def run_stats(run_dir: Path, window_start: int) -> dict:
    """Steps done, tokens per step, steady tokens/s and MFU, whole-loop MFU of one run directory."""
    recs = _records(run_dir)
    summary_path = run_dir / "final" / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    st: dict = {"steps": recs[-1]["step"] if recs else 0, "finished": bool(summary), "tokens_per_step": None,
                "steady_tok_s": None, "steady_mfu": None, "loop_mfu": summary.get("mfu"), "window": "",
                "params": summary.get("parameters"), "last_loss": recs[-1].get("loss") if recs else None,
                "first_step_s": recs[0]["elapsed_s"] if recs else None}
    if not recs:
        return st
    last = recs[-1]
    b, tb = last["step"], last["elapsed_s"]
    if last.get("tokens_per_s"):
        st["tokens_per_step"] = round(last["tokens_per_s"] * tb / b)
    # the window starts after step window_start, or half-way when the run did fewer steps
    a_max = window_start if b > window_start + 1 else max(1, b // 2)
    before = [r for r in recs if r["step"] <= a_max]
    first = before[-1] if before and len(recs) > 1 else None
    if first is not None and first["step"] < b and tb > first["elapsed_s"]:
        a, ta = first["step"], first["elapsed_s"]
        st["window"] = f"{a + 1}-{b}"
        if st["tokens_per_step"]:
            st["steady_tok_s"] = st["tokens_per_step"] * (b - a) / (tb - ta)
        if last.get("mfu"):
            st["steady_mfu"] = last["mfu"] * tb / b * (b - a) / (tb - ta)
    if st["loop_mfu"] is None and last.get("mfu") is not None:
        st["loop_mfu"] = last["mfu"]
    return st


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def train_report(out_md: str, runs: list[str], window_start: int, target: float) -> int:
    """Write the training table (markdown) to ``out_md`` and print it."""
    title = (f"## Training runs: steady state over the steps after step {window_start} "
             f"(target: MFU >= {100 * target:.0f}%)")
    header = ("| run | steps | finished | tokens/step | first step s | steady window | steady tokens/s | "
              "steady MFU | whole-loop MFU | last loss | target |")
    lines = [title, "", header, "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for item in runs:
        name, _, path = item.partition("=")
        st = run_stats(Path(path), window_start)
        met = "n/a" if st["steady_mfu"] is None else ("MET" if st["steady_mfu"] >= target else "NOT MET")
        lines.append(f"| {name} | {st['steps']} | {'yes' if st['finished'] else 'no'} | "
                     f"{_fmt(st['tokens_per_step'], ',')} | {_fmt(st['first_step_s'], '.1f')} | "
                     f"{st['window'] or 'n/a'} | {_fmt(st['steady_tok_s'], ',.0f')} | {_pct(st['steady_mfu'])} | "
                     f"{_pct(st['loop_mfu'])} | {_fmt(st['last_loss'], '.3f')} | {met} |")
    note = ("Steady MFU counts the same FLOPs per token and peak as the trainer (`spikelm.train.flops`); "
            "whole-loop MFU is the trainer's `mfu`, which includes the first steps (JIT, autotuning, compile) "
            "and, when the run finished, the final evaluation and checkpoint.")
    lines += ["", note]
    Path(out_md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def summary(work: str, out_md: str) -> int:
    """Write ``summary.md`` from the stage records and tables under ``work``."""
    w = Path(work)
    info = (w / "run-info.txt").read_text().splitlines() if (w / "run-info.txt").is_file() else []
    lines = ["# GPU check: benchmarks/gpu.sh", "", *[f"- {x}" for x in info], "",
             "## Stages", "", "| stage | seconds | rc | budget s | status |", "|---|---:|---:|---:|---|"]
    stages = (w / "stages.tsv").read_text().splitlines() if (w / "stages.tsv").is_file() else []
    total = 0.0
    for row in stages:
        cells = row.split("\t")
        if len(cells) >= 5:
            lines.append("| " + " | ".join(cells[:5]) + " |")
            try:
                total += float(cells[1])
            except ValueError:
                pass
    lines += ["", f"Stage seconds add up to {total:.0f} s.", ""]
    tables = sorted((w / "tables").glob("*.md")) if (w / "tables").is_dir() else []
    targets = []
    for t in tables:
        for line in t.read_text().splitlines():
            if ("MET" in line or "not checked" in line) and line.startswith(("- ", "|")):
                targets.append(line if line.startswith("- ") else f"- {t.stem}: {line}")
    if targets:
        lines += ["## Targets", "", *targets, ""]
    for t in tables:
        lines += [f"## {t.stem}", "", t.read_text().strip(), ""]
    Path(out_md).write_text("\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_budget.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("out")
    t.add_argument("--size", type=int, required=True)
    t.add_argument("--base", type=int, default=8192)
    r = sub.add_parser("train-report")
    r.add_argument("out_md")
    r.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    r.add_argument("--window-start", type=int, default=10)
    r.add_argument("--target", type=float, default=0.35)
    s = sub.add_parser("summary")
    s.add_argument("work")
    s.add_argument("out_md")
    a = p.parse_args(argv)
    if a.cmd == "tokenizer":
        return make_tokenizer(a.out, a.size, a.base)
    if a.cmd == "train-report":
        return train_report(a.out_md, a.runs, a.window_start, a.target)
    return summary(a.work, a.out_md)


if __name__ == "__main__":
    sys.exit(main())
