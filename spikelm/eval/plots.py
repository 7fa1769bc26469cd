"""PNG plots (matplotlib, Agg backend): loss curves, per-layer spike rates, sparsity/quality trade-off."""
from __future__ import annotations

import json
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a run's ``metrics.jsonl`` (a run directory or the file itself), one dict per line.

    Raises FileNotFoundError when the file is missing.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"no metrics file at {p}")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_loss_curves(runs: dict[str, str | Path] | str | Path, out_png: str | Path, key: str = "loss",
                     val_key: str = "val_loss") -> Path:
    """Training (``key``, solid) and validation (``val_key``, dashed markers) loss in nats/token
    against the optimizer step, one colour per run.

    Args: runs: a run directory / metrics.jsonl, or ``{label: path}`` for several runs;
    out_png: output path (parent folders created). Returns the PNG path.
    Raises FileNotFoundError for a missing metrics file.
    """
    plt = _plt()
    if not isinstance(runs, dict):
        runs = {Path(runs).name: runs}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, path) in enumerate(runs.items()):
        recs = read_metrics(path)
        c = f"C{i}"
        tr = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
        va = [(r["step"], r[val_key]) for r in recs if r.get(val_key) is not None]
        if tr:
            ax.plot(*zip(*tr), color=c, lw=1, label=f"{label} train")
        if va:
            ax.plot(*zip(*va), color=c, ls="--", marker="o", ms=3, label=f"{label} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, out_png)


def plot_spike_rates(site_stats: dict[str, dict], out_png: str | Path, metric: str = "spike_rate") -> Path:
    """Horizontal bars of ``metric`` per site (the ``"sites"`` or ``"layers"`` dict of
    :func:`spikelm.eval.spikes.spike_statistics`). Returns the PNG path.
    Raises ValueError for an empty dict."""
    if not site_stats:
        raise ValueError("no spiking sites to plot")
    plt = _plt()
    names = list(site_stats)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5))
    ax.barh(range(len(names)), [site_stats[n][metric] for n in names])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(metric.replace("_", " "))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, plt, out_png)


def plot_sparsity_tradeoff(points: list[dict], out_png: str | Path, x: str = "sparsity", y: str = "bpb",
                           label: str = "k") -> Path:
    """Quality against sparsity across the adaptive neuron's ``k``: ``points`` are dicts with
    keys ``x``, ``y`` and ``label`` (e.g. ``{"k": 3, "sparsity": 0.6, "bpb": 1.9}``), joined in
    order of ``label``. Returns the PNG path. Raises ValueError for no points."""
    if not points:
        raise ValueError("no points to plot")
    plt = _plt()
    pts = sorted(points, key=lambda p: p[label])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([p[x] for p in pts], [p[y] for p in pts], marker="o")
    for p in pts:
        ax.annotate(f"{label}={p[label]}", (p[x], p[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    return _save(fig, plt, out_png)


def _save(fig, plt, out_png) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
