"""Layer-level tests of the spiking GLA and sliding-window attention layers, SwiGLU and the
generic block: formulas against explicit references, padding, RoPE, the ring buffer."""
import math

import pytest
import torch
import torch.nn.functional as F

from spikelm import SpikeLMConfig
from spikelm.kernels.gla import gla_naive
from spikelm.layers import (SlidingWindowAttention, SpikeGPTBlock, SpikeLMBlock, SpikingGLA, SwiGLU, apply_rope,
                            build_mixer, build_mlp, rope_cos_sin, state_tensors)

D = 16


def cfg(**kw):
    base = dict(hidden_size=D, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)
    return SpikeLMConfig(**{**base, **kw})


def test_gla_layer_matches_explicit_formula():
    torch.manual_seed(0)
    layer = SpikingGLA(cfg(mixer_types="gla", adaptive_spike_mode="off", attention_bias=True)).eval()
    x = torch.randn(2, 7, D)
    with torch.no_grad():
        out, state = layer(x)
        S = state.S
        q = F.relu(layer.q_proj(x)).view(2, 7, 2, 8)
        k = F.relu(layer.k_proj(x)).view(2, 7, 2, 8)
        v = layer.v_proj(x).view(2, 7, 2, 8)
        g = F.logsigmoid(layer.g_proj[1](layer.g_proj[0](x))).view(2, 7, 2, 8) / 16
        o, S_ref = gla_naive(q, k, v, g, 8 ** -0.5)
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + layer.g_norm.eps) * layer.g_norm.weight
        ref = layer.o_proj(o.reshape(2, 7, 16))
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(S, S_ref, atol=1e-5)


def test_gla_pads_leave_state_untouched_and_spiking_quantises_inputs():
    torch.manual_seed(0)
    layer = SpikingGLA(cfg(mixer_types="gla", adaptive_spike_mode="ste")).eval()
    x = torch.randn(1, 6, D)
    pad = torch.cat([torch.randn(1, 2, D), x], 1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    seen = []
    layer.q_proj.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        (a, state_a), (b, state_b) = layer(x), layer(pad, None, mask)
    Sa, Sb = state_a.S, state_b.S
    assert torch.allclose(a, b[:, 2:], atol=1e-6) and torch.allclose(Sa, Sb, atol=1e-6)
    u = seen[0][0]  # the spiked projection input: integer multiples of the per-token threshold
    v_th = x[0].abs().mean(-1, keepdim=True) / 3
    assert torch.allclose(u / v_th, torch.round(u / v_th), atol=1e-4)
    assert 0 < layer.spike_rates["in.sparsity"] < 1


def _reference_swa(layer, x, window):
    """Explicit softmax attention with a band mask and repeated KV heads (no SDPA)."""
    B, L, _ = x.shape
    H, Hk, Dh = layer.heads, layer.kv_heads, layer.head_dim
    q = layer.q_proj(x).view(B, L, H, Dh)
    k = layer.k_proj(x).view(B, L, Hk, Dh)
    v = layer.v_proj(x).view(B, L, Hk, Dh)
    cos, sin = rope_cos_sin(torch.arange(L)[None].expand(B, L), Dh, layer.theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = (t.repeat_interleave(H // Hk, 2) for t in (k, v))
    s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(Dh)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None]
    s = s.masked_fill(~((j <= i) & (j > i - window)), float("-inf"))
    o = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).reshape(B, L, H * Dh)
    return layer.o_proj(o)


@pytest.mark.parametrize("window", [3, 50])
def test_swa_matches_explicit_attention_and_decodes_with_a_ring_buffer(window):
    torch.manual_seed(0)
    layer = SlidingWindowAttention(cfg(mixer_types="swa", num_attention_heads=4, num_key_value_heads=2,
                                       head_dim=4, sliding_window=window)).eval()
    x = torch.randn(2, 11, D)
    with torch.no_grad():
        out, _ = layer(x)
        ref = _reference_swa(layer, x, window)
        state, steps = None, []
        for t in range(11):
            o, state = layer(x[:, t:t + 1], state)
            steps.append(o)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(torch.cat(steps, 1), ref, atol=1e-5)
    assert state.k_cache.shape == (2, window, 2, 4) and state.pos.tolist() == [11, 11]


def test_rope_is_relative():
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    scores = []
    for shift in (0, 5, 100):
        cq, sq = rope_cos_sin(torch.tensor([[3 + shift]]), 8)
        ck, sk = rope_cos_sin(torch.tensor([[1 + shift]]), 8)
        scores.append((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())
    assert torch.allclose(torch.stack(scores), scores[0].expand(3), atol=1e-5)


def test_swiglu_formula():
    torch.manual_seed(0)
    mlp = SwiGLU(cfg(mlp_types="swiglu"))
    x = torch.randn(2, 3, D)
    out, state = mlp(x)
    assert state == () and torch.allclose(out, mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)))


def test_spikegpt_block_is_the_generic_block_with_rwkv4():
    c = cfg()
    torch.manual_seed(0)
    a = SpikeGPTBlock(c, 0)
    b = SpikeLMBlock(c, 0)
    assert list(a.state_dict()) == list(b.state_dict())
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, D)
    (ya, sa), (yb, sb) = a(x), b(x)
    sa, sb = state_tensors(sa), state_tensors(sb)  # att shift, aa, bb, pp, ffn shift, v_att, v_ffn
    assert torch.equal(ya, yb) and len(sa) == 7 and all(torch.equal(s, t) for s, t in zip(sa, sb))


def test_builders_reject_unknown_kinds():
    with pytest.raises(ValueError, match="accepted: rwkv4, ssa, sdsa, gla, swa"):
        build_mixer(cfg(), 0, "mamba")
    with pytest.raises(ValueError, match="accepted: channel_mix, swiglu, spiking_mlp, moe"):
        build_mlp(cfg(), 0, "mixtral")
