"""Smoke test of the benchmark script (``python -m spikelm.kernels.bench``) at tiny shapes."""
from __future__ import annotations

import torch

from spikelm.kernels import bench


def test_bench_quick_runs_and_prints_table(capsys, tmp_path):
    out = tmp_path / "bench.md"
    rc = bench.main(["--quick", "--long", "0", "--reps", "1", "--warmup", "0", "--no-compile", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| op | shape | dtype | impl |" in text
    for op in ("lif", "wkv4", "adaptive_spike"):
        assert f"| {op} |" in text
    if not torch.cuda.is_available():
        assert "GPU columns unavailable" in text
    assert out.read_text().startswith("# spikelm kernel benchmark")
