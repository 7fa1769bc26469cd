"""Fault injection: a one-process ``debug`` run with ``checkpoint_every: 1`` is SIGKILLed at 8
seeded random moments (every second one aimed inside a checkpoint write), resumed
after each kill (``--overwrite`` when it died before its first complete checkpoint, as the
error message advises), and its losses equal an uninterrupted run's."""
import json
import random
import subprocess
import sys
import time

import pytest

from .conftest import env, train_args

pytestmark = pytest.mark.slow

STEPS = 120
OVER = {"train.max_steps": STEPS, "train.checkpoint_every": 1, "train.eval_every": 0, "train.keep_checkpoints": 2,
        "train.grad_accum": 1}


def _records(run):
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _writing(run, since):
    """Whether a step folder without its manifest was written to at or after ``since`` (a torn one
    left by an earlier kill, before its step is trained again, does not count)."""
    def touched(d):
        try:
            return max([d.stat().st_mtime, *(f.stat().st_mtime for f in d.rglob("*"))]) >= since
        except FileNotFoundError:  # deleted while looking: an old step the run cleaned up
            return False
    return any(d.is_dir() and not (d / "spikelm_manifest.json").is_file() and touched(d)
               for d in (run / "checkpoints").glob("step*"))


def _start(corpus, run, flag=None):
    args = [sys.executable, "-m", "spikelm.cli", *train_args(corpus, run, **OVER), *([flag] if flag else [])]
    return subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_random_sigkills_then_resume_give_the_uninterrupted_losses(corpus, tmp_path):
    full = tmp_path / "full"
    out = subprocess.run([sys.executable, "-m", "spikelm.cli", *train_args(corpus, full, **OVER)], env=env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = [r["loss"] for r in _records(full)]

    rng = random.Random(20261201)
    run, flag, kills, torn = tmp_path / "killed", None, 0, 0
    for attempt in range(8):
        p = _start(corpus, run, flag)
        t0 = time.time()  # wait for this attempt's first training step, then kill at a random moment
        done_before = len(_records(run)) if flag == "--resume" else 0
        while time.time() - t0 < 120 and p.poll() is None and len(_records(run)) <= done_before:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if attempt % 2:  # every second kill aims at a checkpoint write: the first step dir without a manifest
            while time.time() - t0 < 120 and p.poll() is None and not _writing(run, t0):
                time.sleep(0.002)
        if p.poll() is not None:  # finished (or failed) before the kill
            assert p.returncode == 0, p.stderr.read()[-2000:]
            break
        p.kill()
        p.wait(timeout=60)
        kills += 1
        ckpt = run / "checkpoints"
        torn += _writing(run, t0)
        flag = "--resume" if ckpt.is_dir() and any((d / "spikelm_manifest.json").is_file() for d in ckpt.iterdir()) \
            else "--overwrite"
    else:
        p = _start(corpus, run, flag)
    p.wait(timeout=300)
    assert p.returncode == 0, p.stderr.read()[-2000:]
    assert kills == 8
    print(f"{torn} of {kills} kills left a half-written checkpoint")
    assert torn >= 1  # the aimed kills land inside a write unless the write ends within the same ~2 ms
    recs = _records(run)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in recs] == expected
    assert (run / "final" / "model.safetensors").is_file()
