"""Model FLOPs per token (the MFU numerator) against hand-counted formulas."""
import torch

from spikelm.models import SpikeLMForCausalLM, flavour_config
from spikelm.train.flops import model_flops_per_token, peak_flops


def test_spikegpt_flops_are_six_times_the_matmul_weights():
    c = flavour_config("debug", vocab_size=300)
    D, F, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    # time-mix: key, value, receptance, output (D x D); channel-mix: key D->F, value F->D,
    # receptance D x D; the LM head D -> V. WKV and the neurons are elementwise (not counted).
    per_layer = 4 * D * D + 2 * D * F + D * D
    expected = 6 * (L * per_layer + D * V)
    assert model_flops_per_token(SpikeLMForCausalLM(c), c, context=64) == expected


def test_attention_terms_follow_context_window_and_state_size():
    c = flavour_config("hybrid-debug", vocab_size=300)
    m = SpikeLMForCausalLM(c)
    linear = sum(6 * x.in_features * x.out_features for x in m.modules() if isinstance(x, torch.nn.Linear))
    H = c.num_attention_heads
    hd = c.head_dim or c.hidden_size // H
    n_swa, n_gla = c.mixer_types.count("swa"), c.mixer_types.count("gla")
    assert n_swa and n_gla
    for T in (8, c.sliding_window * 4):
        want = linear + n_swa * 12 * H * hd * min(T, c.sliding_window) + n_gla * 12 * H * hd * hd
        assert model_flops_per_token(m, c, context=T) == want


def test_peak_is_unknown_off_gpu_and_in_fp32():
    assert peak_flops(torch.device("cpu"), "bf16") is None
    assert peak_flops(torch.device("cpu"), "fp32") is None
