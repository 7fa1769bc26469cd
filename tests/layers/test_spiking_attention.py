"""Layer-level tests of causal spiking self-attention (SSA / SDSA): the formulas, exactness of the
running-sum recurrent form, causality and padding."""
import pytest
import torch

from spikelm import SpikeLMConfig
from spikelm.layers import SpikingNorm, SpikingSelfAttention

D, H = 16, 2


def make(variant, **kw):
    torch.manual_seed(0)
    cfg = SpikeLMConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=H, mixer_types=variant,
                        ssa_scale=1.0, ssa_v_th=0.25, lif_v_th=0.3, **kw)
    layer = SpikingSelfAttention(cfg, variant).eval()
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.7)
    return layer


def capture(layer):
    """Record the inputs of o_proj (the attention output spikes / values)."""
    seen = []
    layer.o_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    return seen


@pytest.mark.parametrize("variant", ["ssa", "sdsa"])
def test_recurrent_form_is_bit_exact(variant):
    layer = make(variant)
    seen = capture(layer)
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        out, full_state = layer(x)
        state, outs = None, []
        for t in range(12):
            o, state = layer(x[:, t:t + 1], state)
            outs.append(o)
    parallel, steps = seen[0], torch.cat(seen[1:], 1)
    assert parallel.abs().sum() > 0 and torch.equal(parallel, steps)  # spike counts: exact
    assert torch.allclose(out, torch.cat(outs, 1), atol=1e-5)
    assert torch.equal(full_state.kv, state.kv)


def test_ssa_matches_spikformer_formula():
    """a_t = LIF_{v_th}(s * q_t sum_{i<=t} k_i^T v_i) per head, with Q, K, V the LIF spike tensors."""
    layer = make("ssa")
    spikes = {}
    for name in ("q_lif", "k_lif", "v_lif", "attn_lif"):
        getattr(layer, name).register_forward_hook(lambda m, i, o, name=name: spikes.__setitem__(name, (i[0], o[0])))
    x = torch.randn(1, 9, D)
    with torch.no_grad():
        layer(x)
    q, k, v = (spikes[n][1].transpose(0, 1).reshape(1, 9, H, D // H) for n in ("q_lif", "k_lif", "v_lif"))
    ref = torch.zeros(1, 9, H, D // H)
    for t in range(9):
        for i in range(t + 1):
            ref[:, t] += (q[:, t] * k[:, i]).sum(-1, keepdim=True) * v[:, i]
    attn_in = spikes["attn_lif"][0].transpose(0, 1)  # the attention neuron's input current
    assert torch.equal(attn_in, ref.reshape(1, 9, D) * layer.scale)
    assert set(torch.unique(q).tolist()) <= {0.0, 1.0}


def test_sdsa_matches_spike_driven_formula():
    """a_t = q_t * LIF(s * sum_{i<=t} k_i * v_i) (element-wise, Spike-driven Transformer)."""
    layer = make("sdsa")
    seen = capture(layer)
    spikes = {}
    for name in ("q_lif", "k_lif", "v_lif", "attn_lif"):
        getattr(layer, name).register_forward_hook(lambda m, i, o, name=name: spikes.__setitem__(name, (i[0], o[0])))
    with torch.no_grad():
        layer(torch.randn(1, 9, D))
    q, k, v = (spikes[n][1].transpose(0, 1) for n in ("q_lif", "k_lif", "v_lif"))
    assert torch.equal(spikes["attn_lif"][0].transpose(0, 1), torch.cumsum(k * v, 1) * layer.scale)
    assert torch.equal(seen[0], q * spikes["attn_lif"][1].transpose(0, 1))


@pytest.mark.parametrize("variant", ["ssa", "sdsa"])
def test_causal_and_padding_leaves_no_trace(variant):
    layer = make(variant)
    x = torch.randn(1, 10, D)
    y = x.clone()
    y[:, 7:] = torch.randn(1, 3, D)
    with torch.no_grad():
        a, _ = layer(x)
        b, _ = layer(y)
        assert torch.equal(a[:, :7], b[:, :7])  # the future does not leak
        pad = torch.cat([torch.randn(1, 3, D) * 5, x], 1)
        mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], 1)
        c, st_pad = layer(pad, None, mask)
        _, st = layer(x)
    assert torch.allclose(a, c[:, 3:], atol=1e-6)
    for s1, s2 in zip(st, st_pad):
        assert torch.equal(s1, s2)


def test_batchnorm_statistics_ignore_padding():
    norm = SpikingNorm("batchnorm", 4).train()
    x = torch.randn(2, 5, 4)
    mask = torch.ones(2, 5)
    mask[0, :2] = 0
    y1 = norm(x, mask)
    x2 = x.clone()
    x2[0, :2] = 100.0
    y2 = norm(x2, mask)
    assert torch.allclose(y1[mask.bool()], y2[mask.bool()]) and (y2[~mask.bool()] == 0).all()
    with pytest.raises(ValueError, match="accepted: layernorm, batchnorm"):
        SpikingNorm("groupnorm", 4)


def test_bad_variant():
    cfg = SpikeLMConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=H)
    with pytest.raises(ValueError, match="accepted: ssa, sdsa"):
        SpikingSelfAttention(cfg, "softmax")
