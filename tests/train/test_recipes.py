"""Every shipped recipe parses, validates and builds its model (large ones on the meta device)."""
import pytest
import torch

from spikelm.cli import load_recipe, shipped_recipes
from spikelm.models import SpikeLMForCausalLM, flavour_config


@pytest.mark.parametrize("name", shipped_recipes())
def test_recipe_builds_its_model(name):
    r = load_recipe(name, [])
    vocab = r.data.vocab_size if r.data.tokenizer is None else 50277  # GPT-NeoX-20B's
    cfg = flavour_config(r.model.flavour, vocab_size=vocab, context_length=r.data.block_size, **r.model.overrides)
    with torch.device("meta"):
        model = SpikeLMForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n > 0
    if name == "spikegpt-216m":
        assert cfg.num_hidden_layers == 18 and cfg.hidden_size == 768 and 180e6 < n < 260e6
    if name == "spikegpt-45m":
        assert cfg.num_hidden_layers == 12 and cfg.hidden_size == 512


def test_default_recipe_is_shakespeare():
    r = load_recipe(None, [])
    assert r.model.flavour == "shakespeare" and r.data.train_files == ["builtin:tinyshakespeare"]
