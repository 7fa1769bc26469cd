"""The layer registry: every registered mixer and MLP keeps the interface the block, the cache,
the config and the FLOPs counter rely on, and a new kind needs one class and one registry line."""
from typing import NamedTuple

import pytest
import torch
from torch import nn

from spikelm import SpikeLMConfig, SpikeLMForCausalLM
from spikelm.layers import (MIXERS, MLPS, BlockState, SpikeLMLayer, build_mixer, build_mlp, kind_of, map_state,
                            state_tensors)
from spikelm.models.configuration_spikelm import MIXER_TYPES, MLP_TYPES
from spikelm.train.flops import model_flops_per_token

D = 16


def cfg(**kw):
    base = dict(hidden_size=D, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                adaptive_spike_mode="ste", lif_v_th=0.3, ssa_scale=1.0, ssa_v_th=0.25, sliding_window=4)
    return SpikeLMConfig(**{**base, **kw})


def built(table, kind):
    torch.manual_seed(0)
    c = cfg(mixer_types=kind) if table is MIXERS else cfg(mlp_types=kind)
    layer = (build_mixer if table is MIXERS else build_mlp)(c, 1).eval()
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.7)
    return layer


KINDS = [(MIXERS, k) for k in MIXERS] + [(MLPS, k) for k in MLPS]
IDS = list(MIXERS) + list(MLPS)


def test_config_accepts_exactly_the_registry():
    assert MIXER_TYPES == tuple(MIXERS) == ("rwkv4", "ssa", "sdsa", "gla", "swa")
    assert MLP_TYPES == tuple(MLPS) == ("channel_mix", "swiglu", "spiking_mlp", "moe")
    for table in (MIXERS, MLPS):
        for kind, cls in table.items():
            assert kind_of(cls) == kind and issubclass(cls, SpikeLMLayer)
    with pytest.raises(ValueError, match="not a registered"):
        kind_of(nn.Linear)


@pytest.mark.parametrize("table,kind", KINDS, ids=IDS)
def test_every_kind_follows_the_state_interface(table, kind):
    """``forward(x, state, mask) -> (out, cls.State)``: a NamedTuple of batch-first tensors; a
    sequence in one call equals it in chunks (outputs and state); the reported statistics are
    exactly the declared spike sites."""
    layer = built(table, kind)
    cls = table[kind]
    assert type(layer) is cls and hasattr(cls.State, "_fields")
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        out, state = layer(x)
        a, st = layer(x[:, :4])
        b, st = layer(x[:, 4:], st)
    assert type(state) is cls.State and type(st) is cls.State and out.shape == x.shape
    assert all(t.shape[0] == 2 for t in state_tensors(state))
    assert torch.allclose(out, torch.cat([a, b], 1), atol=1e-5), kind
    for s1, s2 in zip(state_tensors(state), state_tensors(st)):
        assert s1.dtype == s2.dtype and torch.allclose(s1.float(), s2.float(), atol=1e-5), kind
    assert set(layer.spike_rates) == set(cls.spike_sites), kind


@pytest.mark.parametrize("table,kind", KINDS, ids=IDS)
def test_map_state_keeps_the_named_types(table, kind):
    _, state = built(table, kind)(torch.randn(3, 5, D))
    block = BlockState(state, state, torch.zeros(3, D), None)
    picked = map_state(lambda t: t.index_select(0, torch.tensor([2, 0])), block)
    assert type(picked) is BlockState and type(picked.mixer) is type(state) and picked.v_ffn is None
    assert [t.shape[0] for t in state_tensors(picked)] == [2] * len(state_tensors(block))
    if state_tensors(state):
        assert torch.equal(state_tensors(picked.mixer)[0][1], state_tensors(state)[0][0])


class ShiftState(NamedTuple):
    prev: torch.Tensor


class ShiftMixer(SpikeLMLayer):
    """A toy mixer (``out = W [x_t, x_{t-1}]``): what a new kind has to provide."""

    State = ShiftState
    spike_sites = ()

    def __init__(self, config):
        super().__init__()
        self.proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)

    @classmethod
    def flops_per_token(cls, config, context):
        return 7.0

    def forward(self, x, state=None, mask=None):
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        first = torch.zeros_like(x[:, :1]) if state is None else state.prev[:, None]
        prev = torch.cat([first, x[:, :-1]], 1)
        return self.proj(torch.cat([x, prev], -1)), ShiftState(x[:, -1])


def test_a_new_mixer_is_one_class_and_one_registry_line(monkeypatch):
    monkeypatch.setitem(MIXERS, "shift", ShiftMixer)
    c = cfg(vocab_size=50, mixer_types=["shift", "gla"], mlp_types="swiglu", neuron="none")
    torch.manual_seed(0)
    m = SpikeLMForCausalLM(c).eval()
    assert isinstance(m.model.blocks[0].att, ShiftMixer)
    ids = torch.randint(1, 50, (2, 7))
    with torch.no_grad():
        full = m(ids).logits
        state, steps = None, []
        for t in range(7):
            o = m(ids[:, t:t + 1], past_key_values=state, use_cache=True)
            state, steps = o.past_key_values, steps + [o.logits]
    assert (full - torch.cat(steps, 1)).abs().max() < 1e-4
    assert type(state.layers[0].mixer) is ShiftState
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, num_beams=2)
    assert torch.equal(m.generate(ids[:1], use_cache=True, **kw), m.generate(ids[:1], use_cache=False, **kw))
    linear = sum(6 * x.in_features * x.out_features for x in m.modules() if isinstance(x, nn.Linear))
    gla = MIXERS["gla"].flops_per_token(c, 8)
    assert model_flops_per_token(m, c, context=8) == linear + 7.0 + gla
