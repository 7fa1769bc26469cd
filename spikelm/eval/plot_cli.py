"""``spikelm plot``: PNG plots of a run and of ``spikelm eval --json`` results.

    spikelm plot [RUN_DIR ...] [--eval EVAL.json ...] [--out DIR]

* ``loss.png``: training (solid) and validation (dashed) loss per step from each RUN_DIR's
  ``metrics.jsonl`` (one colour per run);
* ``spike_rates_<name>.png``: per-layer spike rates of each eval result with spike statistics;
* ``sparsity_tradeoff.png``: bits per byte against overall sparsity across the adaptive
  neuron's ``k``, from two or more eval results of adaptive-spiking models (e.g.
  ``spikelm eval MODEL FILE --json --override adaptive_spike_k=K`` for several K).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def tradeoff_points(results: list[dict]) -> list[dict]:
    """``[{"k", "sparsity", "bpb", "spike_rate"}]`` of the eval results that have an adaptive
    spiking ``k`` and overall spike statistics (others are skipped)."""
    pts = []
    for r in results:
        ov = (r.get("spikes") or {}).get("overall") or {}
        if r.get("adaptive_spike_k") is not None and ov:
            pts.append({"k": r["adaptive_spike_k"], "sparsity": ov["sparsity"], "spike_rate": ov["spike_rate"],
                        "bpb": r["bpb"]})
    return pts


def make_plots(run_dirs: list[str | Path], eval_files: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Write the plots described in the module docstring into ``out_dir``; returns their paths.

    Raises:
        FileNotFoundError: a run without ``metrics.jsonl`` or a missing eval file.
        ValueError: nothing to plot, or an eval file that is not ``spikelm eval --json`` output.
    """
    from .plots import plot_loss_curves, plot_sparsity_tradeoff, plot_spike_rates

    out = Path(out_dir)
    written = []
    if run_dirs:
        runs = {}
        for r in run_dirs:
            label = Path(r).name or str(r)
            runs[label if label not in runs else str(r)] = r
        written.append(plot_loss_curves(runs, out / "loss.png"))
    results = []
    for f in eval_files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"eval result {p} does not exist (write one with spikelm eval ... --json > FILE)")
        try:
            r = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not JSON ({e}); write it with spikelm eval ... --json > FILE") from None
        if not isinstance(r, dict) or "bpb" not in r:
            raise ValueError(f"{p} is not a spikelm eval --json result (no 'bpb')")
        results.append(r)
        layers = (r.get("spikes") or {}).get("layers")
        if layers:
            written.append(plot_spike_rates(layers, out / f"spike_rates_{p.stem}.png"))
    pts = tradeoff_points(results)
    if len(pts) >= 2:
        written.append(plot_sparsity_tradeoff(pts, out / "sparsity_tradeoff.png"))
    if not written:
        raise ValueError("nothing to plot: pass run directories (with metrics.jsonl) and/or eval results with "
                         "spike statistics (spikelm eval ... --json)")
    return written


def cmd_plot(argv: list[str]) -> int:
    """``spikelm plot``: see the module docstring. Errors raise :class:`spikelm.cli.CLIError`."""
    from ..cli import CLIError

    p = argparse.ArgumentParser(prog="spikelm plot", description="PNG plots: loss curves of runs, per-layer spike "
                                "rates and the sparsity/quality trade-off across adaptive spiking k from "
                                "spikelm eval --json results.")
    p.add_argument("run_dirs", nargs="*", help="run directories (their metrics.jsonl)")
    p.add_argument("--eval", dest="evals", nargs="+", default=[], metavar="EVAL_JSON",
                   help="files holding spikelm eval --json output")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/plots, else ./plots)")
    a = p.parse_args(argv)
    out = a.out or (str(Path(a.run_dirs[0]) / "plots") if a.run_dirs else "plots")
    try:
        paths = make_plots(a.run_dirs, a.evals, out)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from e
    print("\n".join(str(x) for x in paths))
    return 0
