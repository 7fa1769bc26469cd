"""No host syncs between log steps: losses, token counts and spike rates stay on the device and
are read once per ``train.log_every`` (``spikelm.bench.syncs.HostSyncCounter`` counts every
``.item()/.tolist()/.cpu()/float()...`` of a tensor)."""
import inspect

import pytest
import torch

from spikelm.bench.syncs import HostSyncCounter
from spikelm.train.trainer import Trainer


def _checkpoint_tag_lines():
    """The lines of DeepSpeed's checkpoint-tag check (a collective it makes at every save)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    lines, start = inspect.getsourcelines(DeepSpeedEngine._checkpoint_tag_validation)
    return {f"deepspeed/runtime/engine.py:{start + i}" for i in range(len(lines))}


@pytest.mark.parametrize("flavour", ["debug", "hybrid-debug", "spikformer-debug"])
def test_ten_steps_with_log_every_10_read_the_host_once(recipe, flavour):
    r = recipe(max_steps=10, log_every=10, eval_every=0, checkpoint_every=0)
    r.model.flavour = flavour
    trainer = Trainer(r, overwrite=True)
    allowed = _checkpoint_tag_lines()
    with HostSyncCounter() as syncs:
        summary = trainer.train()
    ours = {site: n for (m, site), n in syncs.by_site.items() if site not in allowed}
    # one read of the 10 losses + spike rates (trainer._sync) and one of the final evaluation
    assert sum(ours.values()) == 2, syncs.report()
    assert all(site.startswith("spikelm/train/trainer.py") for site in ours), syncs.report()
    assert summary["val"]["loss"] > 0


def test_train_step_reads_nothing_on_the_host(recipe):
    trainer = Trainer(recipe(max_steps=3), overwrite=True)
    trainer.engine.train()
    trainer.start_step = 0
    with HostSyncCounter() as syncs:
        losses = [trainer.train_step(step) for step in range(3)]
    assert syncs.total == 0, syncs.report()
    assert all(isinstance(x, torch.Tensor) and x.dim() == 0 for x in losses)


def test_log_every_keeps_one_record_per_step_with_the_same_losses(recipe, tmp_path):
    import json

    from spikelm.train.trainer import train

    def losses(**kw):
        r = recipe(max_steps=6, eval_every=0, checkpoint_every=0, **kw)
        train(r, overwrite=True)
        with open(f"{r.train.run_dir}/metrics.jsonl") as f:
            recs = [json.loads(x) for x in f]
        assert [x["step"] for x in recs] == list(range(1, 7))
        assert all(x["spike_rate"] is not None for x in recs)
        return [x["loss"] for x in recs]

    assert losses(log_every=1) == losses(log_every=4)


@pytest.mark.gpu
def test_no_device_sync_between_log_steps_on_cuda(recipe):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    trainer = Trainer(recipe(max_steps=6, log_every=6), overwrite=True)
    trainer.engine.train()
    trainer.train_step(0)  # warm-up (allocations, lazy init)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            trainer.train_step(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
