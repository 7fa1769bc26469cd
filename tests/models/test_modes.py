"""Parallel and recurrent execution of the same weights give the same logits."""
import pytest
import torch

from spikelm import SpikeLMForCausalLM, flavour_config
from spikelm.models import FLAVOURS

from .conftest import cache_tensors, spiking_weights

VARIANTS = {
    "lif": {},
    "plif": {"neuron": "plif"},
    "ann": {"neuron": "none"},
    "soft-reset+spike-embedding": {"lif_v_reset": None, "spike_embedding": True, "lif_v_th": 0.5},
}


def _model(flavour: str, **kw) -> SpikeLMForCausalLM:
    # every flavour's structure (its depth), at a small width so the test is fast
    cfg = flavour_config(flavour, vocab_size=61, hidden_size=16, intermediate_size=24, **kw)
    return spiking_weights(SpikeLMForCausalLM(cfg).eval())  # larger weights: the neurons actually spike


def _recurrent_logits(m, ids, chunk):
    state, outs = None, []
    for s in range(0, ids.shape[1], chunk):
        o = m(ids[:, s:s + chunk], past_key_values=state, use_cache=True)
        state, outs = o.past_key_values, outs + [o.logits]
    return torch.cat(outs, 1), state


# the SpikeGPT (rwkv4) flavours; the other layouts are covered by tests/models/test_mixers.py
SPIKEGPT_FLAVOURS = [f for f in FLAVOURS if "mixer_types" not in FLAVOURS[f]]


@pytest.mark.parametrize("flavour", SPIKEGPT_FLAVOURS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parallel_equals_recurrent(flavour, variant):
    m = _model(flavour, **VARIANTS[variant])
    ids = torch.randint(0, 61, (2, 13))
    with torch.no_grad():
        full = m(ids).logits
        rec, state = _recurrent_logits(m, ids, chunk=1)
    assert (full - rec).abs().max().item() < 1e-4
    assert state.seen_tokens == 13
    if variant != "ann":
        rates = m.model.spike_rates()
        assert len(rates) == 2 * m.config.num_hidden_layers


def test_neurons_spike_in_test_model():
    """Guards the test above against comparing all-zero spike trains."""
    m = _model("debug")
    with torch.no_grad():
        m(torch.randint(0, 61, (2, 13)))
    rates = m.model.spike_rates()
    assert 0.02 < sum(rates.values()) / len(rates) < 0.98


def test_chunked_prefill_equals_full_prefill():
    m = _model("debug")
    ids = torch.randint(0, 61, (3, 17))
    with torch.no_grad():
        full = m(ids, use_cache=True)
        chunked, state = _recurrent_logits(m, ids, chunk=5)
    assert (full.logits - chunked).abs().max().item() < 1e-4
    for a, b in zip(cache_tensors(full.past_key_values), cache_tensors(state)):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, atol=1e-4, rtol=1e-4)


def test_long_sequence_stays_finite():
    """The running-max WKV keeps every exponent <= 0, so long inputs with large keys stay finite."""
    m = _model("debug")
    with torch.no_grad():
        m.model.blocks[0].att.key.weight.mul_(50)
        logits = m(torch.randint(0, 61, (1, 600))).logits
    assert torch.isfinite(logits).all()


def test_padded_positions_leave_no_trace():
    m = _model("debug")
    ids = torch.randint(0, 61, (1, 9))
    padded = torch.cat([torch.randint(0, 61, (1, 4)), ids], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = m(ids).logits
        with_pad = m(padded, attention_mask=mask).logits[:, 4:]
    assert (alone - with_pad).abs().max().item() < 1e-5


def test_bad_config_errors():
    with pytest.raises(ValueError, match="unknown mixer type"):
        flavour_config("debug", mixer_types=["mamba", "rwkv4"])
    with pytest.raises(ValueError, match="unknown neuron"):
        flavour_config("debug", neuron="izhikevich")
    with pytest.raises(ValueError, match="known flavours"):
        flavour_config("gpt-5")
