"""``spikelm export``: model card and remote code in the directory; ``--push-to-hub`` / ``spikelm push``
without network fail with one clear line, exit status 2, and leave the directory untouched;
model arguments accept Hub ids with a clear error offline."""
import hashlib
import json

import pytest

from spikelm.cli import main
from spikelm.train.config import DataConfig, ModelConfig, OptimConfig, Recipe, TrainConfig

LINES = ["First Citizen:", "Before we proceed any further, hear me speak.", "", "All:", "Speak, speak.", ""]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from spikelm.train.trainer import train

    tmp = tmp_path_factory.mktemp("run")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(LINES * 40) + "\n")
    r = Recipe(model=ModelConfig(flavour="debug"),
               data=DataConfig(train_files=[str(corpus)], vocab_size=280, block_size=16),
               optim=OptimConfig(lr=3e-3, warmup_steps=1),
               train=TrainConfig(run_dir=str(tmp / "run"), max_steps=2, micro_batch_size=2, eval_every=0,
                                 checkpoint_every=0, log_every=1, sample_tokens=0))
    train(r)
    return tmp / "run"


def _digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_export_writes_card_and_remote_code(run_dir, tmp_path, capsys):
    ev = {"loss": 5.5, "bpb": 4.75, "perplexity": 244.7, "tokens": 100, "bytes": 160, "block_size": 16, "stride": 8,
          "files": ["val.txt"],
          "spikes": {"layers": {"layers.0": {"spike_rate": 0.125, "sparsity": 0.875, "dead_fraction": 0.25,
                                             "saturated_fraction": 0.0, "spikes_per_token": 8.0}}},
          "energy": {"dense_macs_per_token": 1000.0, "snn_macs_per_token": 600.0, "snn_acs_per_token": 50.0,
                     "ann_energy_pj_per_token": 4600.0, "snn_energy_pj_per_token": 2805.0, "energy_ratio": 1.64,
                     "e_mac_pj": 4.6, "e_ac_pj": 0.9}}
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    out = tmp_path / "out"
    assert main(["export", str(run_dir), str(out), "--eval-json", str(tmp_path / "ev.json"),
                 "--license", "apache-2.0"]) == 0
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and '"spiking-neural-network"' in front
    assert "license: apache-2.0" in front
    assert "| layers | 2 |" in card and "rwkv4 x2" in card and "lif x2" in card
    assert "| optimizer steps | 2 |" in card and "corpus.txt" in card
    assert "| 5.5000 | 4.7500 | 244.70 |" in card            # evaluation table
    assert "| layers.0 | 0.1250 | 0.8750 | 0.2500 |" in card  # spike statistics
    assert "E_MAC = 4.6 pJ" in card and "trust_remote_code=True" in card
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_spikelm.SpikeLMForCausalLM"
    assert (out / "modeling_spikelm.py").is_file() and (out / "training_summary.json").is_file()


def test_push_offline_fails_clearly_and_leaves_directory(run_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    assert main(["export", str(run_dir), str(out), "--push-to-hub", "someone/tiny-spikelm", "--private"]) == 2
    errs = [x for x in capsys.readouterr().err.splitlines() if "error" in x]  # (progress bars aside)
    assert len(errs) == 1 and errs[0].startswith("spikelm export: error: cannot upload to someone/tiny-spikelm")
    err = errs[0]
    assert "offline mode is on" in err and f"{out} is intact" in err and "spikelm push" in err
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert "someone/tiny-spikelm" in (out / "README.md").read_text()  # the card names the repo
    before = _digest(out)
    assert main(["push", str(out), "someone/tiny-spikelm"]) == 2
    assert "offline mode is on" in capsys.readouterr().err
    assert _digest(out) == before


def test_push_network_failure_and_bad_repo_id(run_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hc

    out = tmp_path / "out"
    assert main(["export", str(run_dir), str(out)]) == 0
    before = _digest(out)
    assert main(["push", str(out), "not a repo id!"]) == 2
    assert "invalid Hub repo id" in capsys.readouterr().err
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(["push", str(out), "someone/tiny-spikelm"]) == 2
    err = capsys.readouterr().err
    assert "upload to someone/tiny-spikelm failed" in err and "intact" in err
    assert _digest(out) == before


def test_hub_ids_offline_give_clear_errors(tmp_path, capsys):
    (tmp_path / "val.txt").write_text("hello\n")
    err = (main(["eval", "someone/not-cached", str(tmp_path / "val.txt")]), capsys.readouterr().err)
    assert err[0] == 2 and "looked up as a Hugging Face Hub model id" in err[1] and "offline" in err[1]
    assert main(["generate", "someone/not-cached", "hi"]) == 2
    assert "Hub model id" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing" / "dir"), str(tmp_path / "val.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
