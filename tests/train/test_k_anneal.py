"""k annealing of the adaptive spiking neuron (train.adaptive_k_anneal_to): the schedule, a run
that logs k and fires fewer spikes as k falls, the export's recorded k, and bad settings."""
import json

import pytest

from spikelm import SpikeLMForCausalLM, flavour_config
from spikelm.train.sparsity import KAnnealing
from spikelm.train.trainer import train


def test_schedule_is_linear_from_the_config_k_and_sets_every_neuron():
    m = SpikeLMForCausalLM(flavour_config("hybrid-debug", vocab_size=50, adaptive_spike_mode="ste",
                                          adaptive_spike_k=3.0))
    a = KAnnealing(m, m.config, 1.0, 5)
    assert [a.k(s) for s in range(7)] == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0, 1.0, 1.0])
    assert a.apply(2) == 2.0 and m.config.adaptive_spike_k == 2.0
    assert len(a.neurons) > 0 and all(n.k == 2.0 for n in a.neurons)
    with pytest.raises(ValueError, match="needs adaptive spiking neurons"):
        KAnnealing(SpikeLMForCausalLM(flavour_config("debug", vocab_size=50)), None, 1.0, 5)


def test_annealed_run_logs_k_and_exports_the_final_k(recipe, tmp_path):
    r = recipe(run_dir=str(tmp_path / "run"), max_steps=5, eval_every=0, checkpoint_every=0,
               adaptive_k_anneal_to=1.0)
    r.model.flavour = "hybrid-debug"
    r.model.adaptive_spike_mode, r.model.adaptive_spike_k = "ste", 3.0
    train(r)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["adaptive_k"] for x in recs] == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0])
    # a smaller k raises the threshold mean|x| / k: more zero counts at the projection inputs
    assert recs[-1]["input_sparsity"] > recs[0]["input_sparsity"] + 0.1
    final = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert final["adaptive_spike_k"] == 1.0


def test_bad_anneal_settings_exit_2_before_writing(tmp_path, capsys):
    from spikelm.cli import main

    from .conftest import LINES

    (tmp_path / "c.txt").write_text("\n".join(LINES * 40) + "\n")
    base = ["train", "debug", f"--data.train_files=[{tmp_path / 'c.txt'}]", "--data.vocab_size=280",
            "--data.block_size=16", f"--train.run_dir={tmp_path / 'r'}", "--train.max_steps=1", "--train.sample_tokens=0"]
    assert main(base + ["--train.adaptive_k_anneal_to=1.0"]) == 2  # the SpikeGPT debug model has no adaptive neuron
    assert "needs adaptive spiking neurons" in capsys.readouterr().err
    assert main(base + ["--train.adaptive_k_anneal_to=0"]) == 2
    assert "train.adaptive_k_anneal_to must be > 0" in capsys.readouterr().err
    assert main(base + ["--train.distill_hidden_weight=1"]) == 2
    assert "need a teacher" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
