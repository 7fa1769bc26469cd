"""Spike statistics and the energy formula on hand-checked toys, and a smoke run on spikelm models."""
import pytest
import torch
from torch import nn

from spikelm import SpikeLMConfig, SpikeLMForCausalLM
from spikelm.eval.energy import E_AC_PJ, E_MAC_PJ, energy_estimate, energy_pj
from spikelm.eval.spikes import SpikeMonitor, site_stats, spike_statistics
from spikelm.neurons import LIF, AdaptiveSpike


def test_site_stats_binary():
    s = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]])
    r = site_stats(s)
    assert r["spike_rate"] == pytest.approx(5 / 12)
    assert r["sparsity"] == pytest.approx(7 / 12)
    assert r["dead_fraction"] == pytest.approx(1 / 3)        # neuron 2 never fires
    assert r["saturated_fraction"] == pytest.approx(1 / 3)   # neuron 0 fires at every token
    assert r["spikes_per_token"] == pytest.approx(5 / 4)
    assert (r["tokens"], r["neurons"]) == (4, 3)


def test_site_stats_integer_counts():
    r = site_stats(torch.tensor([[2, -1], [0, 0]]))
    assert (r["spike_rate"], r["sparsity"], r["dead_fraction"], r["saturated_fraction"], r["spikes_per_token"]) \
        == pytest.approx((0.75, 0.5, 0.0, 0.0, 1.5))
    with pytest.raises(ValueError):
        site_stats(torch.zeros(3))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lif = LIF(tau=2.0, v_th=1.0, v_reset=0.0)
        self.ad = AdaptiveSpike("ste", k=3.0)

    def forward(self, x, u):
        return self.lif(x), self.ad(u)


def test_monitor_hand_checked():
    # LIF (h = v + (x - v)/2, fire at 1, reset to 0) over T=3 steps: input 4 fires every step,
    # 0 never, 1.5 fires at step 2 only (0.75 -> 1.125 -> reset -> 0.75)
    x = torch.tensor([[4.0, 0.0, 1.5]]).repeat(3, 1)
    # adaptive: v_th = mean|u|/3: row 0 -> 0.5, counts [6,-6,0,0]; row 1 -> 1/3, counts [3,3,3,3]
    u = torch.tensor([[3.0, -3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    m = Toy()
    with SpikeMonitor(m) as mon:
        m(x, u)
    st = mon.stats()
    assert st["lif"]["kind"] == "lif" and st["ad"]["kind"] == "adaptive"
    lif = st["lif"]
    assert (lif["spike_rate"], lif["sparsity"], lif["dead_fraction"], lif["saturated_fraction"],
            lif["spikes_per_token"]) == pytest.approx((4 / 9, 5 / 9, 1 / 3, 1 / 3, 4 / 3))
    ad = st["ad"]
    assert (ad["spike_rate"], ad["sparsity"], ad["dead_fraction"], ad["saturated_fraction"],
            ad["spikes_per_token"]) == pytest.approx((3.0, 0.25, 0.0, 0.5, 12.0))
    assert not m.lif._forward_hooks and not m.ad._forward_hooks  # hooks removed


class ToyLM(nn.Module):
    """emb -> fc1 (dense input) -> Heaviside -> fc2 (binary input); emb -> adaptive -> fc3."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(2, 4)
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 3, bias=False), nn.Linear(3, 2), nn.Linear(4, 5)
        self.ad = AdaptiveSpike("ste", k=3.0)
        with torch.no_grad():
            self.emb.weight.copy_(torch.tensor([[3.0, -3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
            self.fc1.weight.copy_(torch.eye(3, 4))

    def forward(self, input_ids, use_cache=False):
        h = self.emb(input_ids)
        s = (self.fc1(h) > 0).float()  # token 0: [1,0,0], token 1: [1,1,1] -> 4 spikes
        return self.fc2(s), self.fc3(self.ad(h))  # adaptive counts: 12 + 12 = 24 spikes


def test_energy_hand_computed():
    r = energy_estimate(ToyLM(), torch.tensor([[0, 1]]))
    L = r["layers"]
    assert r["tokens"] == 2
    assert (L["fc1"]["macs_per_token"], L["fc1"]["spike_input"], L["fc1"]["acs_per_token"]) == (12, False, 0)
    assert L["fc2"]["spike_input"] and L["fc2"]["input_rate"] == pytest.approx(4 / 6)
    assert (L["fc2"]["macs_per_token"], L["fc2"]["acs_per_token"]) == pytest.approx((6, 2 * 4 / 2))
    assert (L["fc3"]["macs_per_token"], L["fc3"]["acs_per_token"]) == pytest.approx((20, 5 * 24 / 2))
    assert r["dense_macs_per_token"] == pytest.approx(38)
    assert r["ann_energy_pj_per_token"] == pytest.approx(38 * 4.6)
    assert r["snn_energy_pj_per_token"] == pytest.approx(12 * 4.6 + (4 + 60) * 0.9)
    assert (E_MAC_PJ, E_AC_PJ) == (4.6, 0.9) and energy_pj(2, 3) == pytest.approx(2 * 4.6 + 3 * 0.9)


@pytest.mark.parametrize("kw", [dict(mixer_types="ssa", mlp_types="spiking_mlp", ssa_scale=1.0, ssa_v_th=0.25,
                                     lif_v_th=0.3),
                                dict(mixer_types="gla", mlp_types="swiglu", neuron="none", norm_type="rmsnorm",
                                     adaptive_spike_mode="ste")], ids=["ssa", "gla"])
def test_spikelm_models(kw):
    torch.manual_seed(0)
    m = SpikeLMForCausalLM(SpikeLMConfig(vocab_size=37, hidden_size=16, num_hidden_layers=2, intermediate_size=24,
                                         num_attention_heads=2, context_length=32, **kw)).eval()
    ids = torch.randint(0, 37, (3, 10))
    r = spike_statistics(m, ids, batch_size=2)
    assert set(r["layers"]) == {"layers.0", "layers.1"} and r["overall"]
    for st in r["sites"].values():
        assert 0 <= st["sparsity"] <= 1 and st["tokens"] == 30
    if "ssa" in kw.values():
        m(input_ids=ids)
        assert r["sites"]["model.blocks.1.lif1"]["kind"] == "lif"
        assert set(r["sites"]) >= {"model.blocks.0.att.q_lif", "model.blocks.0.ffn.lif"}
    e = energy_estimate(m, ids)
    spiking = {n for n, l in e["layers"].items() if l["spike_input"]}
    assert not e["layers"]["head"]["spike_input"]
    assert spiking == ({f"model.blocks.{i}.{p}" for i in (0, 1) for p in ("att.o_proj", "ffn.fc2")}
                       if "ssa" in kw.values() else
                       {f"model.blocks.{i}.{p}" for i in (0, 1) for p in
                        ("att.q_proj", "att.k_proj", "att.v_proj", "att.g_proj.0", "att.o_proj",
                         "ffn.gate_proj", "ffn.up_proj", "ffn.down_proj")})
    assert e["snn_energy_pj_per_token"] > 0 and e["ann_energy_pj_per_token"] > 0
