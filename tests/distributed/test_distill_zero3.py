"""Distillation under ZeRO-3: the teacher is sharded like the student (no rank holds it whole),
and 2 ranks log the same KL and hidden-state terms as 1 rank with the teacher loaded whole."""
import json

import pytest

from .conftest import one_rank_run, torchrun, train_args

pytestmark = pytest.mark.slow


def test_zero3_sharded_teacher_matches_a_whole_teacher(tmp_path):
    for d in ("t", "w"):
        (tmp_path / d).mkdir()
    corpus, teacher_run = one_rank_run(tmp_path / "t", lambda c, r: train_args(
        c, r, **{"train.max_steps": 2, "train.eval_every": 0, "train.checkpoint_every": 0}))
    teacher = teacher_run / "final"
    kw = {"train.max_steps": 2, "train.eval_every": 0, "train.checkpoint_every": 0, "train.distill_from": str(teacher),
          "train.distill_hidden_weight": 1.0, "data.tokenizer": str(teacher)}
    _, whole = one_rank_run(tmp_path / "w", lambda c, r: train_args(c, r, **kw))
    run = tmp_path / "z3"
    out = torchrun(train_args(corpus, run, **kw, **{"train.zero_stage": 3, "train.grad_accum": 1}))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(ZeRO-3 sharded)" in out.stdout + out.stderr

    def terms(d):
        recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        return [(r["loss"], r["distill_kl"], r["distill_hidden"]) for r in recs]

    a, b = terms(whole), terms(run)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-4, abs=1e-6), (a, b)
