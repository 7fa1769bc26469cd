"""PNG plots are written from a metrics.jsonl, spike statistics and a k sweep."""
import json

import pytest

from spikelm.eval.plots import plot_loss_curves, plot_sparsity_tradeoff, plot_spike_rates, tradeoff_points


def test_plots(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"step": s, "loss": 5.0 / s} for s in range(1, 6)] + [{"step": 6, "loss": 0.8, "val_loss": 0.9}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    outs = [plot_loss_curves({"snn": run, "ann": run / "metrics.jsonl"}, tmp_path / "p" / "loss.png"),
            plot_spike_rates({"layers.0": {"spike_rate": 0.2}, "layers.1": {"spike_rate": 0.1}}, tmp_path / "r.png"),
            plot_sparsity_tradeoff([{"series": "hybrid", "label": "k=3", "sparsity": 0.6, "bpb": 2.0},
                                    {"series": "hybrid", "label": "k=1", "sparsity": 0.3, "bpb": 1.9},
                                    {"series": "spikegpt", "label": "", "sparsity": 0.7, "bpb": 2.1}],
                                   tmp_path / "k.png")]
    for p in outs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError):
        plot_loss_curves(tmp_path / "missing", tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_spike_rates({}, tmp_path / "y.png")


def test_tradeoff_points_group_by_model_and_label_by_override():
    def res(model, layout, bpb, sparsity, over=None):
        return {"model": f"runs/{model}/final", "layout": layout, "bpb": bpb, "config_overrides": over or {},
                "spikes": {"overall": {"sparsity": sparsity, "spike_rate": 1 - sparsity}}}
    pts = tradeoff_points([res("hybrid", "gla/swa", 2.0, 0.6, {"adaptive_spike_k": 3}),
                           res("hybrid", "gla/swa", 2.1, 0.7, {"adaptive_spike_k": 1}),
                           res("shakespeare", "rwkv4", 2.1, 0.72), res("sparse", "rwkv4", 2.1, 0.87),
                           {"model": "ann", "bpb": 2.4, "spikes": {"overall": {}}}])
    assert [(p["series"], p["label"]) for p in pts] == [("gla/swa", "hybrid k=3"), ("gla/swa", "hybrid k=1"),
                                                        ("rwkv4", "shakespeare"), ("rwkv4", "sparse")]
    named = tradeoff_points([res("a", "x", 2.0, 0.5), res("b", "x", 2.0, 0.6)], names=["SpikeGPT", "hybrid"])
    assert [p["series"] for p in named] == ["SpikeGPT", "hybrid"]
