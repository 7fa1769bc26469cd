"""The spike-rate regulariser (train.spike_rate_weight / spike_rate_target): its penalty against
the rates the model reports, its gradient, and a run that lowers the spike rate towards the target."""
import json

import pytest
import torch

from spikelm import SpikeLMForCausalLM, flavour_config
from spikelm.train.sparsity import enable_rate_grads, take_spike_rate_penalty
from spikelm.train.trainer import train

from ..conftest import spiking_weights


def test_penalty_is_the_mean_square_distance_of_the_site_rates():
    torch.manual_seed(0)
    m = spiking_weights(SpikeLMForCausalLM(flavour_config("debug", vocab_size=50))).train()
    assert enable_rate_grads(m) == 2
    ids = torch.randint(0, 50, (2, 16))
    m(input_ids=ids, labels=ids)
    rates = [v for k, v in m.model.spike_rates().items() if k.endswith((".att", ".ffn"))]
    assert len(rates) == 4 and all(0 < r < 1 for r in rates)
    pen = take_spike_rate_penalty(m, 0.1)
    assert pen.item() == pytest.approx(sum((r - 0.1) ** 2 for r in rates) / 4, rel=1e-5)
    pen.backward()  # through the surrogate gradient into the weights
    assert m.model.blocks[0].att.key.weight.grad.abs().sum() > 0
    assert take_spike_rate_penalty(m, 0.1) is None  # taken: nothing is kept between calls
    with pytest.raises(ValueError, match="needs block-output LIF/PLIF neurons"):
        enable_rate_grads(SpikeLMForCausalLM(flavour_config("hybrid-debug", vocab_size=50)))


def test_regularised_run_fires_less(recipe, tmp_path):
    """With a low threshold the debug model fires more as it trains; a target rate of 0.02 holds it down."""
    out = {}
    for name, kw in {"plain": {}, "sparse": dict(spike_rate_weight=50.0, spike_rate_target=0.02)}.items():
        r = recipe(run_dir=str(tmp_path / name), max_steps=6, eval_every=0, checkpoint_every=0, **kw)
        r.model.lif_v_th = 0.005
        train(r)
        out[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert "spike_rate_penalty" not in out["plain"][-1]
    assert all(r["spike_rate_penalty"] > 0 for r in out["sparse"])
    # the unregularised model fires more and more as it trains (0.014 -> 0.11); the regularised one stays low
    assert out["plain"][-1]["spike_rate"] > 0.08
    assert out["sparse"][-1]["spike_rate"] < 0.6 * out["plain"][-1]["spike_rate"]
