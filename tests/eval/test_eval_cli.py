"""``spikelm eval`` through one code path for a plain HF Llama directory and a spikelm directory:
loss/BPB, spike statistics (spikelm only) and the MAC/AC energy estimate; ``--override`` for a k
sweep and ``spikelm plot`` over the results."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spikelm import SpikeLMConfig, SpikeLMForCausalLM
from spikelm.cli import main
from spikelm.data import train_bpe_tokenizer_from_iterator
from spikelm.eval.energy import E_AC_PJ, E_MAC_PJ

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n" * 6


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    tok = train_bpe_tokenizer_from_iterator([TEXT] * 4, vocab_size=300, model_max_length=32)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=32))
    snn = SpikeLMForCausalLM(SpikeLMConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2,
                                           num_attention_heads=2, mixer_types=["gla", "ssa"],
                                           mlp_types=["swiglu", "spiking_mlp"], neuron_types=["none", "lif"],
                                           adaptive_spike_mode="ste", adaptive_spike_k=3.0, context_length=32))
    out = {}
    for name, m in (("llama", llama), ("snn", snn)):
        m.save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
        out[name] = tmp / name
    (tmp / "val.txt").write_text(TEXT)
    out["val"] = tmp / "val.txt"
    out["vocab"] = len(tok)
    return out


def _eval(capsys, *argv):
    assert main(["eval", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plain_llama_dense_energy_no_spikes(dirs, capsys):
    r = _eval(capsys, dirs["llama"], dirs["val"], "--block-size", "16", "--stride", "8")
    assert r["model_type"] == "llama" and r["tokens"] > 0 and r["bpb"] > 0
    assert r["spikes"]["sites"] == {} and r["spikes"]["overall"] == {} and r["spike_rates"] == {}
    V = dirs["vocab"]
    # per token: q 16x16, k 16x8, v 16x8, o 16x16, gate/up 16x32, down 32x16, lm head 16xV
    macs = 256 + 128 + 128 + 256 + 512 + 512 + 512 + 16 * V
    en = r["energy"]
    assert en["dense_macs_per_token"] == pytest.approx(macs)
    assert en["snn_macs_per_token"] == pytest.approx(macs) and en["snn_acs_per_token"] == 0
    assert en["ann_energy_pj_per_token"] == pytest.approx(E_MAC_PJ * macs) and en["energy_ratio"] == pytest.approx(1)
    assert main(["eval", str(dirs["llama"]), str(dirs["val"])]) == 0
    text = capsys.readouterr().out
    assert "bits/byte" in text and "no spiking neurons" in text and "MACs dense" in text


def test_spikelm_spikes_and_energy(dirs, capsys):
    r = _eval(capsys, dirs["snn"], dirs["val"], "--block-size", "16")
    sites = r["spikes"]["sites"]
    kinds = {s["kind"] for s in sites.values()}
    assert kinds == {"lif", "adaptive"}
    for s in sites.values():
        assert 0 <= s["sparsity"] <= 1 and 0 <= s["dead_fraction"] <= 1 and s["spikes_per_token"] >= 0
    assert set(r["spikes"]["layers"]) == {"layers.0", "layers.1"}
    en = r["energy"]
    # projections fed by spikes cost ACs at the measured rate: E_SNN = E_MAC * MAC + E_AC * AC
    assert en["snn_acs_per_token"] > 0 and en["snn_macs_per_token"] < en["dense_macs_per_token"]
    assert en["snn_energy_pj_per_token"] == pytest.approx(E_MAC_PJ * en["snn_macs_per_token"]
                                                          + E_AC_PJ * en["snn_acs_per_token"])
    assert r["adaptive_spike_k"] == 3.0
    assert main(["eval", str(dirs["snn"]), str(dirs["val"]), "--block-size", "16"]) == 0
    text = capsys.readouterr().out
    assert "spikes (measured on" in text and "model.blocks.1.lif2" in text and "ACs" in text
    r2 = _eval(capsys, dirs["snn"], dirs["val"], "--block-size", "16", "--no-spikes")
    assert "spikes" not in r2 and "energy" not in r2 and r2["loss"] == pytest.approx(r["loss"])


def test_k_sweep_and_plots(dirs, capsys, tmp_path):
    files = []
    for k in (1, 3, 8):
        r = _eval(capsys, dirs["snn"], dirs["val"], "--block-size", "16", "--override", f"adaptive_spike_k={k}")
        assert r["adaptive_spike_k"] == k and r["config_overrides"] == {"adaptive_spike_k": k}
        assert r["layout"].endswith("adaptive")
        files.append(tmp_path / f"k{k}.json")
        files[-1].write_text(json.dumps(r))
    # a finer threshold (larger k) emits more spikes: lower sparsity
    sp = [json.loads(f.read_text())["spikes"]["overall"]["sparsity"] for f in files]
    assert sp[0] > sp[1] > sp[2]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 6 - s, "val_loss": 6.5 - s}) + "\n"
                                               for s in (1, 2, 3)))
    # --sweep: the same three evaluations in one call, one JSON with the points in order
    sw = _eval(capsys, dirs["snn"], dirs["val"], "--block-size", "16", "--sweep", "adaptive_spike_k=1,3,8")
    assert sw["sweep"] == "adaptive_spike_k" and [p["adaptive_spike_k"] for p in sw["points"]] == [1, 3, 8]
    assert [p["bpb"] for p in sw["points"]] == pytest.approx([json.loads(f.read_text())["bpb"] for f in files])
    assert main(["eval", str(dirs["snn"]), str(dirs["val"]), "--block-size", "16", "--sweep",
                 "adaptive_spike_k=1,2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("adaptive_spike_k") and len(table) == 3 and "sparsity" in table[0]
    for bad, msg in ((["--sweep", "adaptive_spike_k=1"], "two or more values"),
                     (["--sweep", "adaptive_spike_k=1,2", "--override", "adaptive_spike_k=3"], "also set by --override")):
        assert main(["eval", str(dirs["snn"]), str(dirs["val"]), *bad]) == 2
        assert msg in capsys.readouterr().err
    (tmp_path / "sweep.json").write_text(json.dumps(sw))
    assert main(["plot", "--eval", str(tmp_path / "sweep.json"), "--out", str(tmp_path / "p2")]) == 0
    assert (tmp_path / "p2" / "sparsity_tradeoff.png").is_file() and (tmp_path / "p2" / "spike_rates_sweep_2.png").is_file()
    capsys.readouterr()
    assert main(["plot", str(run), "--eval", *map(str, files), "--out", str(tmp_path / "plots")]) == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["loss.png", "sparsity_tradeoff.png", "spike_rates_k1.png", "spike_rates_k3.png",
                     "spike_rates_k8.png"]
    assert all((tmp_path / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    capsys.readouterr()
    assert main(["plot", "--eval", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(dirs["snn"]), str(dirs["val"]), "--override", "no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
