"""SIGTERM (e.g. SLURM preemption) makes a run checkpoint and exit cleanly; --resume continues it."""
import json
import signal
import subprocess
import sys
import time

import pytest

from .conftest import env, losses, train_args

pytestmark = pytest.mark.slow


def test_sigterm_checkpoints_and_resume_continues(corpus, tmp_path):
    run = tmp_path / "run"
    args = train_args(corpus, run, **{"train.max_steps": 400, "train.checkpoint_every": 0, "train.eval_every": 0})
    p = subprocess.Popen([sys.executable, "-m", "spikelm.cli", *args], env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out
    step = len(losses(run))
    assert 3 <= step < 400
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step{step}"
    assert not (run / "final").exists()  # a preempted run is not exported as final
    # resume runs to the end
    args = train_args(corpus, run, **{"train.max_steps": step + 2, "train.checkpoint_every": 0,
                                      "train.eval_every": 0})
    r = subprocess.run([sys.executable, "-m", "spikelm.cli", *args, "--resume"], env=env(), capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [x["step"] for x in recs] == list(range(1, step + 3))
