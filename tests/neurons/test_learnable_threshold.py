"""The learnable LIF threshold (lif_v_th_learnable): the same spikes as the fixed threshold it
holds, a gradient into log_v_th, the fused block path equal to the unfused one, and bad settings."""
import math

import pytest
import torch

from spikelm import SpikeLMConfig, SpikeLMForCausalLM, flavour_config
from spikelm.neurons import LIF, PLIF


@pytest.mark.parametrize("v_reset", [0.0, None])
def test_spikes_equal_the_fixed_threshold_and_v_is_in_units_of_v_th(v_reset):
    torch.manual_seed(0)
    x = torch.randn(20, 3, 7) * 2
    fixed = LIF(v_th=1.7, v_reset=v_reset)
    learn = LIF(v_th=1.0, v_reset=v_reset, learn_v_th=True)
    with torch.no_grad():
        learn.log_v_th.fill_(math.log(1.7))
    (s0, v0), (s1, v1) = fixed(x), learn(x)
    assert torch.equal(s0, s1) and s0.sum() > 0
    assert torch.allclose(v1 * 1.7, v0, atol=1e-5)
    assert float(learn.threshold().detach()) == pytest.approx(1.7)


def test_the_threshold_learns_through_the_surrogate():
    torch.manual_seed(0)
    n = PLIF(init_tau=2.0, v_th=1.0, learn_v_th=True)
    x = torch.randn(16, 4, 5) * 2
    n(x)[0].sum().backward()
    assert n.log_v_th.grad is not None and n.log_v_th.grad.item() < 0  # a higher threshold: fewer spikes
    with pytest.raises(ValueError, match="reset to 0 or a soft reset"):
        LIF(v_th=1.0, v_reset=-0.5, learn_v_th=True)
    with pytest.raises(ValueError, match="lif_v_th_learnable needs lif_v_reset 0 or None"):
        SpikeLMConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, lif_v_reset=-0.5, lif_v_th_learnable=True)


def test_block_fused_path_equals_the_neuron_module_and_old_weights_load():
    torch.manual_seed(0)
    cfg = flavour_config("debug", vocab_size=50, lif_v_th=0.3, lif_v_th_learnable=True)
    m = SpikeLMForCausalLM(cfg).eval()
    with torch.no_grad():
        for i, b in enumerate(m.model.blocks):
            b.lif1.log_v_th.fill_(math.log(0.2 + 0.1 * i))
    ids = torch.randint(0, 50, (2, 12))
    fused = m(input_ids=ids).logits  # lif_residual, one op per neuron
    hooks = [b.lif1.register_forward_hook(lambda *a: None) for b in m.model.blocks]  # forces the module call
    unfused = m(input_ids=ids).logits
    for h in hooks:
        h.remove()
    assert torch.allclose(fused, unfused, atol=1e-5)
    # recurrent (one token at a time through the cache) equals parallel
    out = m(input_ids=ids[:, :6], use_cache=True)
    step = m(input_ids=ids[:, 6:], past_key_values=out.past_key_values).logits
    assert torch.allclose(step, fused[:, 6:], atol=1e-4)
    names = {k for k in m.state_dict() if k.endswith("log_v_th")}
    assert len(names) == 2 * cfg.num_hidden_layers
    plain = SpikeLMForCausalLM(flavour_config("debug", vocab_size=50))
    assert not any(k.endswith("log_v_th") for k in plain.state_dict())  # fixed thresholds: no new weights
