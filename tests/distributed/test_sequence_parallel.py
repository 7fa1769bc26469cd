"""Sequence parallelism (train.sequence_parallel_size) on 2 CPU ranks (gloo): for every layout a
sequence split over the ranks gives the whole sequence's loss and gradients; the Trainer with
P=2 x D=1 under ZeRO-2 reproduces a 1-rank run and resumes exactly; bad settings are one line."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import env, free_port, losses, torchrun, train_args

pytestmark = pytest.mark.slow


def sp_args(corpus, run_dir, **over) -> list[str]:
    args = train_args(corpus, run_dir, **{"data.block_size": 32, "train.grad_accum": 1, **over})
    args[1] = "hybrid-long-debug"  # GLA + SWA, sequence_parallel_size 2, ZeRO-2
    return args


def test_every_layout_splits_exactly():
    script = Path(__file__).with_name("sp_check.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script)]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["layout"] for r in rows] == ["rwkv4", "gla", "swa", "ssa", "hybrid"]
    for r in rows:
        assert r["loss_diff"] < 1e-5 and r["grad_diff"] < 1e-5 * max(1.0, r["grad_scale"]), r


def test_trainer_two_chunks_match_one_rank_and_resume(corpus, tmp_path):
    one = tmp_path / "one"
    res = subprocess.run([sys.executable, "-m", "spikelm.cli", *sp_args(corpus, one, **{
        "train.sequence_parallel_size": 1, "train.zero_stage": 0})], env=env(), capture_output=True, text=True,
        timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "sp"
    out = torchrun(sp_args(corpus, run))
    assert out.returncode == 0, out.stderr[-3000:]
    base, two = losses(one), losses(run)
    assert len(two) == len(base) == 4
    assert two == pytest.approx(base, rel=1e-5), (base, two)
    ckpt = run / "checkpoints"  # resume from step 2: steps 3 and 4 again, the same losses
    shutil.rmtree(ckpt / "step4")
    (ckpt / "latest").write_text("step2")
    out = torchrun(sp_args(corpus, run) + ["--resume"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert losses(run) == pytest.approx(two, abs=1e-6)


def test_sequence_and_data_parallel_compose(corpus, tmp_path):
    """P=2 x D=2 on 4 ranks (ZeRO-1): two groups of two chunks, the same global batch of 4 as one
    rank with 2 micro-batches of 2."""
    one = tmp_path / "one"
    res = subprocess.run([sys.executable, "-m", "spikelm.cli", *sp_args(corpus, one, **{
        "train.sequence_parallel_size": 1, "train.zero_stage": 0, "train.grad_accum": 2})], env=env(),
        capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "sp"
    out = torchrun(sp_args(corpus, run, **{"train.zero_stage": 1}), nproc=4, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    assert losses(run) == pytest.approx(losses(one), rel=1e-5)


@pytest.mark.parametrize("over, msg", [
    ({}, "train.sequence_parallel_size (2) must divide the number of ranks (1)"),
    ({"data.block_size": 31}, "data.block_size (31) must be divisible by train.sequence_parallel_size (2)"),
    ({"train.zero_stage": 3}, "train.sequence_parallel_size > 1 needs train.zero_stage 0, 1 or 2"),
    ({"train.sequence_parallel_size": 0}, "train.sequence_parallel_size must be >= 1"),
])
def test_bad_sequence_parallel_settings_are_one_line(corpus, tmp_path, over, msg, capsys):
    from spikelm.cli import main

    assert main(sp_args(corpus, tmp_path / "bad", **over)) == 2  # in this process: one rank
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
