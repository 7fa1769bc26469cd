"""Operation count and energy estimate per token: dense MACs vs synaptic accumulates (ACs).

The formula used across the SNN literature (Spikformer, Zhou et al. 2023, ICLR; SpikeGPT,
Zhu et al. 2023; SpikingBrain report), with the 45 nm CMOS energies of Horowitz 2014
("Computing's energy problem", ISSCC) for 32-bit floating point:

* ``E_MAC = 4.6 pJ`` (fp32 multiply 3.7 pJ + add 0.9 pJ), ``E_AC = 0.9 pJ`` (fp32 add).
* Every linear projection ``W [out, in]`` applied to ``n`` token positions costs
  ``MAC = n * in * out`` multiply-accumulates when dense.
* When its input is a spike tensor ``s`` (binary LIF spikes, or SpikingBrain's integer spike
  counts, each count ``c`` meaning ``|c|`` spikes), every spike triggers ``out`` accumulates,
  so ``AC = out * sum |s| = MAC * r`` with ``r`` = mean ``|s|`` the measured input spike rate.
* ``E_ANN = E_MAC * sum_all MAC`` (the same network run as an ANN), and
  ``E_SNN = E_MAC * sum_dense MAC + E_AC * sum_spiking AC``; both reported per token
  (divided by the ``B * L`` input positions).

Counted: every ``nn.Linear`` that runs (the LM head included; biases and the embedding
lookup are ignored). Not counted: attention score/value products, WKV and GLA recurrences,
norms and element-wise ops (the same choice as the papers' per-layer MAC tables; they are a
small share for short contexts). A projection's input counts as a spike tensor when it is the
output of a hooked spiking site (:mod:`spikelm.eval.spikes`) or is exactly binary ({0, 1}).
"""
from __future__ import annotations

import torch
from torch import nn

from .spikes import SpikeMonitor, summarize_sites

E_MAC_PJ = 4.6  # 45 nm, fp32 multiply-accumulate (Horowitz 2014)
E_AC_PJ = 0.9   # 45 nm, fp32 accumulate (Horowitz 2014)


def energy_pj(macs: float, acs: float = 0.0, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ) -> float:
    """Energy in picojoules of ``macs`` multiply-accumulates and ``acs`` accumulates."""
    return macs * e_mac + acs * e_ac


@torch.no_grad()
def energy_estimate(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 16, e_mac: float = E_MAC_PJ,
                    e_ac: float = E_AC_PJ, spikes: bool = False) -> dict:
    """Measure MACs/ACs per token of every linear projection of ``model`` on ``input_ids [B, L]``.

    Args:
        model: a spikelm model or any torch LM called as ``model(input_ids=..., use_cache=False)``.
        input_ids: int64 ``[B, L]``, unpadded.
        batch_size: rows per forward call.
        e_mac, e_ac: energies in pJ (defaults: 4.6 / 0.9, Horowitz 2014, 45 nm fp32).
        spikes: also return the spike statistics measured in the same forward passes under
            ``"spikes"`` (:func:`spikelm.eval.spikes.spike_statistics`'s result).
    Returns:
        ``{"tokens": B*L, "layers": {linear name: {"in", "out", "macs_per_token",
        "spike_input": bool, "input_rate", "acs_per_token"}}, "dense_macs_per_token" (all
        projections), "snn_macs_per_token" (non-spiking inputs), "snn_acs_per_token",
        "ann_energy_pj_per_token", "snn_energy_pj_per_token", "energy_ratio" (ANN / SNN)}``.
    Raises:
        ValueError: ``input_ids`` not 2-D.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"expected input_ids [B, L], got shape {tuple(input_ids.shape)}")
    device = next(model.parameters()).device
    spike_outs: dict[int, tuple[torch.Tensor, float]] = {}  # data_ptr -> (tensor kept alive, mean |s|)

    def on_spikes(name, kind, s, out):
        spike_outs[out.data_ptr()] = (out, s.detach().float().abs().mean().item())

    acc: dict[str, dict] = {}

    def linear_hook(name):
        def hook(mod, args, output):
            x = args[0]
            n = x.numel() // mod.in_features
            rec = spike_outs.get(x.data_ptr())
            if rec is not None and rec[0].numel() == x.numel():
                rate, spiking = rec[1], True
            elif bool(((x == 0) | (x == 1)).all()):
                rate, spiking = x.float().mean().item(), True
            else:
                rate, spiking = 1.0, False
            a = acc.setdefault(name, {"in": mod.in_features, "out": mod.out_features, "macs": 0.0, "acs": 0.0,
                                      "spike_input": spiking, "n": 0})
            macs = float(n) * mod.in_features * mod.out_features
            a["macs"] += macs
            a["n"] += n
            if spiking:
                a["acs"] += macs * rate
                a["spike_input"] = True
        return hook

    handles = [m.register_forward_hook(linear_hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        with SpikeMonitor(model, on_spikes=on_spikes) as mon:
            for s in range(0, input_ids.shape[0], batch_size):
                model(input_ids=input_ids[s:s + batch_size].to(device), use_cache=False)
                spike_outs.clear()
    finally:
        for h in handles:
            h.remove()
    tokens = input_ids.numel()
    layers, dense, snn_mac, snn_ac = {}, 0.0, 0.0, 0.0
    for name, a in acc.items():
        layers[name] = {"in": a["in"], "out": a["out"], "macs_per_token": a["macs"] / tokens,
                        "spike_input": a["spike_input"], "input_rate": a["acs"] / a["macs"] if a["spike_input"] else 1.0,
                        "acs_per_token": a["acs"] / tokens}
        dense += a["macs"] / tokens
        if a["spike_input"]:
            snn_ac += a["acs"] / tokens
        else:
            snn_mac += a["macs"] / tokens
    ann_e, snn_e = energy_pj(dense, 0.0, e_mac, e_ac), energy_pj(snn_mac, snn_ac, e_mac, e_ac)
    out = {"tokens": tokens, "layers": layers, "dense_macs_per_token": dense, "snn_macs_per_token": snn_mac,
            "snn_acs_per_token": snn_ac, "ann_energy_pj_per_token": ann_e, "snn_energy_pj_per_token": snn_e,
            "energy_ratio": ann_e / snn_e if snn_e else float("inf"), "e_mac_pj": e_mac, "e_ac_pj": e_ac}
    if spikes:
        out["spikes"] = summarize_sites(mon.stats())
    return out
