"""Checkpoints that survive damage: a torn ``latest``, a truncated or unfinished newest step and
a planted pickle payload. Resume falls back to the newest complete step (and reproduces the
uninterrupted run's losses); a payload is refused by resume and export, never executed."""
import json
import os
import shutil

import pytest
import torch

from spikelm.train.checkpoint import MANIFEST, CheckpointError, complete_steps
from spikelm.train.export import export_checkpoint
from spikelm.train.trainer import train


def _recs(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def full_run(recipe, tmp_path):
    """A 6-step run with checkpoints at 3 and 6, its records, and a copy to damage."""
    train(recipe())
    run = tmp_path / "run"
    return run, _recs(run)


def _resume_and_compare(recipe, run, full, capsys, expect_from: int, reason: str):
    shutil.rmtree(run / "final")
    train(recipe(), resume=True)
    out = capsys.readouterr().out
    assert reason in out and f"resumed from {run / 'checkpoints'} at step {expect_from}" in out, out
    resumed = _recs(run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_every_step_has_a_manifest_and_latest_is_complete(full_run):
    run, _ = full_run
    ckpt = run / "checkpoints"
    assert complete_steps(ckpt) == (["step6", "step3"], [])
    files = json.loads((ckpt / "step6" / MANIFEST).read_text())["files"]
    assert "mp_rank_00_model_states.pt" in files and all(v > 0 for v in files.values())
    assert not [p for p in ckpt.rglob(".*tmp*")]


def test_torn_latest_falls_back_to_the_newest_complete_step(full_run, recipe, capsys):
    run, full = full_run
    (run / "checkpoints" / "latest").write_text("")  # a kill inside a plain open-and-write
    _resume_and_compare(recipe, run, full[:6], capsys, 6, "resumed")


def test_truncated_newest_step_is_skipped(full_run, recipe, capsys):
    run, full = full_run
    states = run / "checkpoints" / "step6" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:100])
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:3]))
    _resume_and_compare(recipe, run, full, capsys, 3, "step6: mp_rank_00_model_states.pt is truncated")


def test_unfinished_newest_step_is_skipped(full_run, recipe, capsys):
    run, full = full_run
    (run / "checkpoints" / "step6" / MANIFEST).unlink()  # killed before the manifest was written
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:3]))
    _resume_and_compare(recipe, run, full, capsys, 3, "step6: incomplete (no manifest")


def test_damaged_step_with_the_right_size_is_skipped_when_it_fails_to_load(full_run, recipe, capsys):
    run, full = full_run
    states = run / "checkpoints" / "step6" / "mp_rank_00_model_states.pt"
    data = bytearray(states.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # same size, zeroed second half
    states.write_bytes(bytes(data))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:3]))
    _resume_and_compare(recipe, run, full, capsys, 3, "step6: RuntimeError")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_payload_is_refused_by_resume_and_export(full_run, recipe, tmp_path):
    run, _ = full_run
    marker = tmp_path / "payload-ran"
    states = run / "checkpoints" / "step6" / "mp_rank_00_model_states.pt"
    sd = torch.load(states, weights_only=True)
    sd["evil"] = _Payload(marker)
    torch.save(sd, states)
    # keep the manifest consistent: the attacker controls the whole directory
    man = run / "checkpoints" / "step6" / MANIFEST
    m = json.loads(man.read_text())
    m["files"]["mp_rank_00_model_states.pt"] = states.stat().st_size
    man.write_text(json.dumps(m))
    shutil.rmtree(run / "final")
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint file.*refusing to load it"):
        train(recipe(), resume=True)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint file"):
        export_checkpoint(run, tmp_path / "hf")
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_no_usable_checkpoint_says_what_to_do(full_run, recipe):
    from spikelm.train.rundir import RunDirError

    run, _ = full_run
    # killed inside the run's first checkpoint: the step has files but no manifest, no `latest`
    (run / "checkpoints" / "step6" / MANIFEST).unlink()
    (run / "checkpoints" / "latest").unlink()
    shutil.rmtree(run / "checkpoints" / "step3")
    with pytest.raises(RunDirError, match="no complete checkpoint.*step6: incomplete.*--overwrite"):
        train(recipe(), resume=True)
    with pytest.raises(FileNotFoundError, match="no usable checkpoint"):
        export_checkpoint(run, run.parent / "hf")


def test_outputs_get_the_umasks_permissions_not_0700(full_run):
    run, _ = full_run
    umask = os.umask(0)
    os.umask(umask)
    for d in (run / "final", run / "tokenizer"):
        assert d.stat().st_mode & 0o777 == 0o777 & ~umask, oct(d.stat().st_mode)
