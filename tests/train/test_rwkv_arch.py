"""``model.arch: rwkv``: transformers' RwkvForCausalLM trained by our loop is the SpikeGPT
default's exact ANN twin (same parameter count), evaluates and generates like any model, and
``spikelm convert`` turns it into a spikelm model (``--spiking off``: the same logits)."""
import torch
from transformers import AutoModelForCausalLM

from spikelm.cli import main
from spikelm.train.archs import build_config, causal_lm_class
from spikelm.train.config import ModelConfig
from spikelm.train.trainer import train


def test_rwkv_flavours_have_the_spikegpt_parameter_counts():
    for rwkv, spiking in (("rwkv-debug", "debug"), ("rwkv-shakespeare", "shakespeare")):
        counts = []
        for arch, flavour in (("rwkv", rwkv), ("spikelm", spiking)):
            cfg = build_config(arch, flavour, {}, vocab_size=512, max_position_embeddings=128, eos_token_id=0,
                               bos_token_id=0, pad_token_id=0)
            with torch.device("meta"):
                counts.append(sum(p.numel() for p in causal_lm_class(cfg)(cfg).parameters()))
        assert counts[0] == counts[1], (rwkv, counts)


def test_rwkv_trains_evaluates_and_converts(recipe, tmp_path, corpus, capsys):
    r = recipe(max_steps=4, checkpoint_every=2, eval_every=2)
    r.model = ModelConfig(arch="rwkv", flavour="rwkv-debug")
    summary = train(r)
    final = tmp_path / "run" / "final"
    assert summary["val"]["bpb"] > 0 and AutoModelForCausalLM.from_pretrained(final).config.model_type == "rwkv"
    assert main(["eval", str(final), str(corpus), "--json"]) == 0
    assert main(["generate", str(final), "First", "--max-new-tokens", "4"]) == 0
    assert main(["convert", str(final), str(tmp_path / "snn"), "--spiking", "off"]) == 0
    ids = torch.randint(0, 280, (2, 16))
    with torch.no_grad():
        ann = AutoModelForCausalLM.from_pretrained(final).eval()(ids).logits
        snn = AutoModelForCausalLM.from_pretrained(tmp_path / "snn").eval()(ids).logits
    assert (ann - snn).abs().max() < 1e-4
    assert main(["convert", str(final), str(tmp_path / "spiking")]) == 0  # default: LIF neurons added
    cfg = AutoModelForCausalLM.from_pretrained(tmp_path / "spiking").config
    assert cfg.model_type == "spikelm" and cfg.neuron == "lif"
