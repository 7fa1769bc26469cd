"""Failures: a killed 2-rank run resumes exactly; a dead rank ends the others; NaN losses are reported."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import env, free_port, torchrun, train_args

pytestmark = pytest.mark.slow


def _wait_for(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_sigkill_then_resume_matches_uninterrupted(corpus, tmp_path):
    steps = 40
    over = {"train.max_steps": steps, "train.checkpoint_every": 2, "train.eval_every": 0, "train.grad_accum": 1}
    full = tmp_path / "full"
    out = torchrun(train_args(corpus, full, **over))
    assert out.returncode == 0, out.stderr[-3000:]

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "spikelm.cli", *train_args(corpus, run, **over)]
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    latest = run / "checkpoints" / "latest"
    ok = _wait_for(lambda: latest.exists() and latest.read_text().strip() != "", 180)
    os.killpg(p.pid, signal.SIGKILL)  # the agent and both ranks, mid-run
    p.wait(timeout=60)
    assert ok
    if latest.read_text().strip() == f"step{steps}":
        pytest.skip("the run finished before it could be killed")
    resumed_from = int(latest.read_text().strip()[4:])
    out = torchrun(train_args(corpus, run, **over) + ["--resume"])
    assert out.returncode == 0, out.stderr[-3000:]
    a = {json.loads(l)["step"]: json.loads(l)["loss"] for l in (full / "metrics.jsonl").read_text().splitlines()}
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, steps + 1))  # records past the checkpoint were redone
    after = {r["step"]: r["loss"] for r in recs if r["step"] > resumed_from}
    assert sorted(after) == list(range(resumed_from + 1, steps + 1))
    for s, loss in after.items():
        assert abs(loss - a[s]) < 1e-6, (s, loss, a[s])


def test_dead_rank_ends_the_others(corpus, tmp_path):
    """Ranks started without an agent (as `srun python ...` would): kill one, the other must exit with an
    error within the collective timeout instead of hanging."""
    port = str(free_port())
    args = train_args(corpus, tmp_path / "run", **{"train.max_steps": 100000, "train.checkpoint_every": 0,
                                                   "train.eval_every": 0, "train.grad_accum": 1,
                                                   "train.collective_timeout_s": 20})
    procs = []
    for rank in (0, 1):
        e = dict(env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "spikelm.cli", *args], env=e,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 180)
    procs[1].kill()
    t0 = time.time()
    try:
        procs[0].wait(timeout=90)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("rank 0 kept running 90 s after rank 1 died")
    assert procs[0].returncode != 0
    assert time.time() - t0 < 90


def test_nonfinite_loss_is_reported_with_its_step(recipe_factory):
    from spikelm.train.trainer import train

    r = recipe_factory()
    r.optim.lr = 1e9
    r.optim.grad_clip = 0.0
    r.train.max_steps = 30
    with pytest.raises(FloatingPointError, match=r"step \d+: training loss is (nan|inf)"):
        train(r)


@pytest.fixture
def recipe_factory(corpus, tmp_path):
    from spikelm.train.config import DataConfig, ModelConfig, OptimConfig, Recipe, TrainConfig

    def make():
        return Recipe(model=ModelConfig(flavour="debug"),
                      data=DataConfig(train_files=[str(corpus)], vocab_size=280, block_size=16),
                      optim=OptimConfig(warmup_steps=0),
                      train=TrainConfig(run_dir=str(tmp_path / "nan"), micro_batch_size=2, eval_every=0,
                                        checkpoint_every=0, sample_tokens=0))
    return make
