"""``spikelm plot``: PNG plots of runs and eval results (``spikelm.eval.plots.make_plots``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..eval.plots import make_plots
from .errors import CLIError


def cmd_plot(argv: list[str]) -> int:
    """``spikelm plot``: see the module docstring. Errors raise :class:`CLIError`."""
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
