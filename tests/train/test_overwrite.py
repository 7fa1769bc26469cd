"""``--overwrite`` never loses the old run to a new one that fails: bad configuration is refused
before anything is touched, and a run that fails before its first checkpoint puts the old run
back."""
import json

import pytest

from spikelm.cli import main
from spikelm.train.rundir import REPLACED
from spikelm.train.trainer import train


def _snapshot(run):
    return {str(p.relative_to(run)): p.stat().st_size for p in run.rglob("*") if p.is_file()}


@pytest.fixture
def old_run(recipe, tmp_path):
    train(recipe())
    run = tmp_path / "run"
    return run, _snapshot(run)


def test_a_rejected_deepspeed_config_leaves_the_old_run_untouched(old_run, corpus, capsys):
    run, before = old_run
    code = main(["train", "debug", f"--data.train_files=[{corpus}]", "--data.vocab_size=280", "--data.block_size=16",
                 f"--train.run_dir={run}", "--overwrite", "--train.deepspeed", "{train_batch_size: 3}",
                 "--train.threads=1"])
    err = capsys.readouterr().err
    assert code == 2 and "DeepSpeed rejected" in err and "train_batch_size" in err and len(err.splitlines()) == 1
    assert _snapshot(run) == before


def test_a_new_run_failing_before_its_first_checkpoint_restores_the_old_one(old_run, recipe):
    run, before = old_run
    r = recipe(max_steps=30, checkpoint_every=0, eval_every=0)
    r.optim.lr, r.optim.grad_clip = 1e9, 0.0  # fp32: the first non-finite loss ends the run
    with pytest.raises(FloatingPointError):
        train(r, overwrite=True)
    assert _snapshot(run) == before and not (run / REPLACED).exists()


def test_the_old_run_is_deleted_once_the_new_one_has_a_checkpoint(old_run, recipe):
    run, _ = old_run
    train(recipe(max_steps=4, checkpoint_every=2), overwrite=True)
    assert not (run / REPLACED).exists()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == ["step2", "step4"]
