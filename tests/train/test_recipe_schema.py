"""The typed recipe schema: every shipped recipe and every recipe a run writes parses through
it; unknown or mistyped keys fail at parse time with what is accepted; the model section's
layout keys are exactly SpikeLMConfig's architectural fields."""
import inspect
import json
import typing
from dataclasses import asdict

import pytest

from spikelm.cli import CLIError, load_recipe, shipped_recipes
from spikelm.models import SpikeLMConfig
from spikelm.train.config import ModelConfig, Recipe
from spikelm.train.archs import ANN_LAYOUT_KEYS
from spikelm.train.layout import MixerType, MlpType, NeuronType, layout_key_names

DATA_KEYS = {"vocab_size", "max_position_embeddings", "context_length", "bos_token_id", "eos_token_id",
             "pad_token_id", "use_cache", "kwargs"}
"""SpikeLMConfig arguments that come from the tokenizer and data, or are not architecture."""


def _roundtrip(r: Recipe, path) -> Recipe:
    """A recipe as the trainer writes it (``recipe.json``), parsed back through the schema."""
    path.write_text(json.dumps(asdict(r), indent=2) + "\n")
    return load_recipe(str(path), [])


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_parses_and_round_trips(name, tmp_path):
    r = load_recipe(name, [])
    assert _roundtrip(r, tmp_path / "recipe.json") == r


def test_recipes_written_by_the_tests_round_trip(recipe, tmp_path):
    for r in (recipe(), recipe(zero_stage=2, grad_accum=1)):
        assert _roundtrip(r, tmp_path / "recipe.json") == r


def test_layout_keys_are_spikelm_configs_fields():
    params = set(inspect.signature(SpikeLMConfig.__init__).parameters) - {"self"}
    assert set(layout_key_names()) == params - DATA_KEYS
    from transformers import LlamaConfig, RwkvConfig

    assert all(hasattr(LlamaConfig(), k) for k in ANN_LAYOUT_KEYS["llama"])
    assert all(hasattr(RwkvConfig(), k) for k in ANN_LAYOUT_KEYS["rwkv"])
    assert set(ANN_LAYOUT_KEYS["llama"]) <= set(layout_key_names()) >= set(ANN_LAYOUT_KEYS["rwkv"])


def test_layout_literals_are_the_configs_accepted_values():
    from spikelm.models import configuration_spikelm as c

    assert set(typing.get_args(MixerType)) == set(c.MIXER_TYPES)
    assert set(typing.get_args(MlpType)) == set(c.MLP_TYPES)
    assert set(typing.get_args(NeuronType)) == set(c.NEURONS)


def test_unknown_model_key_fails_with_the_accepted_ones():
    with pytest.raises(CLIError, match=r"unknown key model.mixer_typez; accepted model keys: .*mixer_types.*"
                                       r"adaptive_spike_k"):
        load_recipe("debug", ["--model.mixer_typez", "gla"])


@pytest.mark.parametrize("over, match", [
    (["--model.mixer_types", "[rwkv5, gla]"], "mixer_types"),
    (["--model.adaptive_spike_k", "three"], "adaptive_spike_k"),
    (["--train.precision", "fp64"], "precision"),
    (["--train.zero_stage", "4"], "zero_stage"),
    (["--optim.schedule", "linear"], "schedule"),
    (["--data.packing", "squeeze"], "packing"),
])
def test_mistyped_values_fail_at_parse_time(over, match):
    with pytest.raises(CLIError, match=match):
        load_recipe("debug", over)


def test_typed_layout_keys_reach_the_config(tmp_path):
    r = load_recipe("debug", ["--model.mixer_types", "[gla, swa]", "--model.mlp_types", "swiglu",
                              "--model.neuron", "none", "--model.adaptive_spike_mode", "ste",
                              "--model.adaptive_spike_k", "2", "--model.lif_v_reset", "soft"])
    assert r.model.layout() == {"mixer_types": ["gla", "swa"], "mlp_types": "swiglu", "neuron": "none",
                                "adaptive_spike_mode": "ste", "adaptive_spike_k": 2.0, "lif_v_reset": None}


def test_old_overrides_still_read_with_a_deprecation_message(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  flavour: debug\n  overrides: {neuron: plif, lif_tau: 3.0}\n  lif_tau: 4.0\n")
    r = load_recipe(str(path), [])
    assert "model.overrides is deprecated" in capsys.readouterr().out
    assert r.model.layout() == {"neuron": "plif", "lif_tau": 4.0}  # typed keys win
    with pytest.warns(DeprecationWarning):
        ModelConfig(overrides={"neuron": "plif"})


def test_spikelm_only_keys_are_refused_for_the_llama_baseline():
    with pytest.raises(CLIError, match="spikelm layout key.*accepts: hidden_size"):
        load_recipe("ann-debug", ["--model.mixer_types", "gla"])
