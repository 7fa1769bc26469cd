"""``--resume`` keeps the run as recorded: changes to keys that fix the model, the optimizer
state or the data order are refused (all listed); the others are applied and recorded."""
import json

import pytest

from spikelm.train.trainer import train


def test_resume_refuses_changes_to_the_model_and_the_data_order(recipe, tmp_path):
    train(recipe())
    run = tmp_path / "run"
    before = (run / "recipe.json").read_text()
    r = recipe(max_steps=8, seed=7)
    r.data.block_size, r.model.neuron = 32, "plif"
    with pytest.raises(ValueError, match=r"changes model.neuron: None -> 'plif'; data.block_size: 16 -> 32; "
                                         r"train.seed: 1337 -> 7.*Keys that may change on resume: .*max_steps"):
        train(r, resume=True)
    assert (run / "recipe.json").read_text() == before and not (run / "resumes.jsonl").exists()


def test_resume_applies_and_records_the_keys_that_may_change(recipe, tmp_path):
    train(recipe())
    run = tmp_path / "run"
    train(recipe(max_steps=8, eval_every=4, log_every=2), resume=True)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert json.loads((run / "recipe.json").read_text())["train"]["max_steps"] == 8
    assert json.loads((run / "resumes.jsonl").read_text()) == {
        "changes": {"train.max_steps": [6, 8], "train.eval_every": [3, 4], "train.log_every": [1, 2]}}
