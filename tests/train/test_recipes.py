"""Every shipped recipe parses, validates and builds its model (large ones on the meta device)."""
import pytest
import torch

from spikelm.cli import load_recipe, shipped_recipes
from spikelm.train.archs import build_config, causal_lm_class


def _meta_model(r):
    vocab = r.data.vocab_size if r.data.tokenizer is None else 50277  # GPT-NeoX-20B's
    cfg = build_config(r.model.arch, r.model.flavour, r.model.layout(), vocab_size=vocab,
                       max_position_embeddings=r.data.block_size, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    with torch.device("meta"):
        return cfg, causal_lm_class(cfg)(cfg)


@pytest.mark.parametrize("name", shipped_recipes())
def test_recipe_builds_its_model(name):
    r = load_recipe(name, [])
    if r.model.init_from is not None:  # fine-tuning recipes: the model comes from a directory
        from pathlib import Path

        from spikelm.recipes import resolve_data_files as resolve_files

        files = resolve_files(r.data.train_files) + resolve_files(r.data.val_files or [])
        assert files and all(Path(f).is_file() for f in files), files
        return
    cfg, model = _meta_model(r)
    n = sum(p.numel() for p in model.parameters())
    assert n > 0
    if name == "spikegpt-216m":
        assert cfg.num_hidden_layers == 18 and cfg.hidden_size == 768 and 180e6 < n < 260e6
    if name == "spikegpt-45m":
        assert cfg.num_hidden_layers == 12 and cfg.hidden_size == 512


def test_default_recipe_is_shakespeare():
    r = load_recipe(None, [])
    assert r.model.flavour == "shakespeare" and r.data.train_files == ["builtin:tinyshakespeare"]


def test_ann_baseline_matches_the_default_models_size():
    """ann-shakespeare: a transformers Llama within 1% of the spiking default's parameters, same
    data, tokenizer, steps, batch and optimizer."""
    ann, snn = load_recipe("ann-shakespeare", []), load_recipe("shakespeare", [])
    (_, a), (_, s) = _meta_model(ann), _meta_model(snn)
    na, ns = (sum(p.numel() for p in m.parameters()) for m in (a, s))
    assert type(a).__name__ == "LlamaForCausalLM" and type(s).__name__ == "SpikeLMForCausalLM"
    assert (na, ns) == (3_672_320, 3_682_304)  # the counts stated in the recipe's comment
    assert ann.data == snn.data and ann.optim == snn.optim
    assert {k: v for k, v in vars(ann.train).items() if k != "run_dir"} == \
        {k: v for k, v in vars(snn.train).items() if k != "run_dir"}
