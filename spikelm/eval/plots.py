"""PNG plots (matplotlib, Agg backend): loss curves, per-layer spike rates, sparsity/quality trade-off.

:func:`make_plots` (``spikelm plot``) writes, from run directories and ``spikelm eval --json`` results:

* ``loss.png``: training (solid) and validation (dashed) loss per step from each run's
  ``metrics.jsonl`` (one colour per run);
* ``spike_rates_<name>.png``: per-layer spike rates of each eval result with spike statistics;
* ``sparsity_tradeoff.png``: bits per byte against overall sparsity, one series per layout
  (``rwkv4+channel_mix, lif``, ``gla/swa+swiglu, adaptive``, ...): every model of a layout
  (trained with other sparsity targets, thresholds or k) and every config override of one
  (``spikelm eval MODEL FILE --json --sweep adaptive_spike_k=1,2,3``) is a point of its curve,
  labelled by model and override. Written from two or more points.
"""
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


def plot_sparsity_tradeoff(points: list[dict], out_png: str | Path, x: str = "sparsity", y: str = "bpb") -> Path:
    """Quality against sparsity: ``points`` are :func:`tradeoff_points` dicts (keys ``x``, ``y``,
    ``"series"`` and ``"label"``); the points of a series are joined in order of ``x`` and each
    point is annotated with its label. Returns the PNG path. Raises ValueError for no points."""
    if not points:
        raise ValueError("no points to plot")
    plt = _plt()
    series: dict[str, list[dict]] = {}
    for pt in points:
        series.setdefault(pt["series"], []).append(pt)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(pts, key=lambda p: p[x])
        ax.plot([p[x] for p in pts], [p[y] for p in pts], marker="o", color=f"C{i % 10}", label=name)
        for p in pts:
            if p.get("label"):
                ax.annotate(p["label"], (p[x], p[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{x} (block-output and projection-input neurons)" if x == "sparsity" else x)
    ax.set_ylabel("validation bits per byte" if y == "bpb" else y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, plt, out_png)


def _save(fig, plt, out_png) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def tradeoff_points(results: list[dict], names: list[str] | None = None) -> list[dict]:
    """``[{"series", "label", "sparsity", "spike_rate", "bpb"}]`` of the eval results with overall
    spike statistics (others, e.g. ANNs, are skipped). ``series`` is the result's ``layout``
    (e.g. ``"rwkv4+channel_mix, lif"``; ``names[i]`` when given), so one curve per layout runs
    across its models and settings; ``label`` is the model directory's name (the run's, for a
    run's ``final`` export) and its config overrides (``k=2`` for ``adaptive_spike_k``)."""
    pts = []
    for i, r in enumerate(results):
        ov = (r.get("spikes") or {}).get("overall") or {}
        if not ov:
            continue
        model = Path(str(r.get("model", "model")))
        label = model.parent.name if model.name == "final" else model.name
        over = r.get("config_overrides") or {}
        label = " ".join([label] + [f"{'k' if k == 'adaptive_spike_k' else k}={v}" for k, v in over.items()])
        series = names[i] if names else r.get("layout") or label
        pts.append({"series": series, "label": label, "sparsity": ov["sparsity"], "spike_rate": ov["spike_rate"],
                    "bpb": r["bpb"]})
    return pts


def read_eval_results(path: str | Path) -> list[dict]:
    """The results in a ``spikelm eval --json`` file: one, or a ``--sweep``'s points.

    Raises FileNotFoundError (missing file) or ValueError (not such output)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"eval result {p} does not exist (write one with spikelm eval ... --json > FILE)")
    try:
        r = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not JSON ({e}); write it with spikelm eval ... --json > FILE") from None
    rs = r.get("points") if isinstance(r, dict) and "sweep" in r else [r]
    if not isinstance(rs, list) or not all(isinstance(x, dict) and "bpb" in x for x in rs):
        raise ValueError(f"{p} is not a spikelm eval --json result (no 'bpb')")
    return rs


def make_plots(run_dirs: list[str | Path], eval_files: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Write the plots described in the module docstring into ``out_dir``; returns their paths.

    Raises:
        FileNotFoundError: a run without ``metrics.jsonl`` or a missing eval file.
        ValueError: nothing to plot, or an eval file that is not ``spikelm eval --json`` output.
    """
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
        rs = read_eval_results(f)
        for i, r in enumerate(rs):
            layers = (r.get("spikes") or {}).get("layers")
            if layers:
                suffix = f"_{i}" if len(rs) > 1 else ""
                written.append(plot_spike_rates(layers, out / f"spike_rates_{Path(f).stem}{suffix}.png"))
        results += rs
    pts = tradeoff_points(results)
    if len(pts) >= 2:
        written.append(plot_sparsity_tradeoff(pts, out / "sparsity_tradeoff.png"))
    if not written:
        raise ValueError("nothing to plot: pass run directories (with metrics.jsonl) and/or eval results with "
                         "spike statistics (spikelm eval ... --json)")
    return written
