"""End-to-end training on a tiny corpus: outputs, resume, export, refusals."""
import json
import shutil

import pytest
from transformers import AutoModelForCausalLM

from spikelm.train.trainer import train
from spikelm.train.rundir import RunDirError
from spikelm.train.schedule import BatchOrder, lr_factor


def _losses(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_checkpoints_export_and_metrics(recipe, tmp_path):
    summary = train(recipe())
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step6"
    assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == ["step3", "step6"]
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "tokenizer.json").is_file()
    assert list((run / "tb").iterdir())
    recs = _losses(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert "val_bpb" in recs[2] and recs[-1]["spike_rate"] is not None
    assert summary["val"]["bpb"] > 0 and summary["tokens_per_s"] > 0
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert model.config.context_length == 16 and model.config.model_type == "spikelm"


def test_resume_reproduces_uninterrupted_run(recipe, tmp_path):
    train(recipe())
    run = tmp_path / "run"
    full = _losses(run)
    # simulate a crash right after the step-3 checkpoint
    shutil.rmtree(run / "checkpoints" / "step6")
    shutil.rmtree(run / "final")
    (run / "checkpoints" / "latest").write_text("step3")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:3]))
    with pytest.raises(RunDirError, match="already holds a run"):
        train(recipe())
    train(recipe(), resume=True)
    resumed = _losses(run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full[3:], resumed[3:]):
        assert a["loss"] == b["loss"], (a, b)
    assert resumed[-1]["val_loss"] == full[-1]["val_loss"]


def test_overwrite_and_resume_flags(recipe, tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(recipe(), resume=True)
    train(recipe(max_steps=2, eval_every=0, checkpoint_every=0))
    train(recipe(max_steps=2, eval_every=0, checkpoint_every=0), overwrite=True)
    assert [r["step"] for r in _losses(tmp_path / "run")] == [1, 2]


def test_bad_data_writes_nothing(recipe, tmp_path):
    r = recipe()
    r.data.block_size = 100000
    with pytest.raises(ValueError, match="block_size"):
        train(r)
    assert not (tmp_path / "run").exists()


def test_lr_schedule_and_batch_order():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    order = BatchOrder(num_blocks=10, global_batch=4, seed=3)
    seen = order.global_indices(0) + order.global_indices(1) + order.global_indices(2)[:2]
    assert sorted(seen) == list(range(10))  # one epoch visits every block once
    # world-size independent: the union of the ranks' micro-batches is the global batch
    one = order.rank_micro_batches(5, 0, 1, 2)
    two = order.rank_micro_batches(5, 0, 2, 2) + order.rank_micro_batches(5, 1, 2, 2)
    assert sorted(sum(one, [])) == sorted(sum(two, [])) == sorted(order.global_indices(5))


def test_spike_rates_logged_to_tensorboard(recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(recipe(max_steps=2, eval_every=0, checkpoint_every=0))
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "val/bpb" in tags
    assert {"spike_rate/layers.0.att", "spike_rate/layers.1.ffn"} <= set(tags)


def test_activation_checkpointing_gives_the_same_losses(recipe, tmp_path):
    train(recipe(max_steps=3, eval_every=0, checkpoint_every=0))
    plain = _losses(tmp_path / "run")
    r = recipe(max_steps=3, eval_every=0, checkpoint_every=0, activation_checkpointing=True)
    r.train.run_dir = str(tmp_path / "ckpt")
    train(r)
    recomputed = _losses(tmp_path / "ckpt")
    from spikelm import SpikeLMForCausalLM, flavour_config

    m = SpikeLMForCausalLM(flavour_config("debug", vocab_size=50))
    m.activation_checkpointing_enable()
    assert m.model.gradient_checkpointing  # the flag the model's forward reads
    assert [a["loss"] for a in plain] == pytest.approx([b["loss"] for b in recomputed], rel=1e-6)


@pytest.mark.parametrize("stage,params", [(2, False), (3, True)])
def test_offload_gives_the_same_losses(recipe, tmp_path, stage, params):
    """ZeRO-Offload (optimizer states, and under ZeRO-3 the parameters, kept in CPU memory and
    stepped there): the same training as without it."""
    train(recipe(max_steps=3, eval_every=0, checkpoint_every=0, zero_stage=stage))
    base = [r["loss"] for r in _losses(tmp_path / "run")]
    train(recipe(max_steps=3, eval_every=0, checkpoint_every=0, zero_stage=stage, offload_optimizer=True,
                 offload_params=params, run_dir=str(tmp_path / "off")))
    off = [r["loss"] for r in _losses(tmp_path / "off")]
    assert off == pytest.approx(base, rel=1e-5, abs=1e-6)
