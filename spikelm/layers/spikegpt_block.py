"""SpikeGPT block: pre-LayerNorm residual block with a LIF neuron after each sub-block."""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import LIF, PLIF
from .channel_mix import RWKV4ChannelMix
from .time_mix import RWKV4TimeMix


def make_neuron(config) -> LIF:
    """The LIF/PLIF neuron described by a ``SpikeLMConfig`` (``neuron``, ``lif_*``, ``surrogate*``)."""
    kw = dict(v_th=config.lif_v_th, v_reset=config.lif_v_reset, decay_input=config.lif_decay_input,
              detach_reset=config.lif_detach_reset, surrogate=config.surrogate, alpha=config.surrogate_alpha)
    if config.neuron == "plif":
        return PLIF(init_tau=config.lif_tau, **kw)
    return LIF(tau=config.lif_tau, **kw)


class SpikeGPTBlock(nn.Module):
    """``x = x + LIF(TimeMix(LN(x)))``; ``x = x + LIF(ChannelMix(LN(x)))`` (Zhu et al. 2023, SpikeGPT).

    The LIF neurons run along the token axis: token ``t`` is the neuron's time step ``t``, and
    their membrane potentials are part of the recurrent state. Layer 0 also normalises its
    input (``ln0``), as in SpikeGPT. With ``config.neuron == "none"`` the neurons are skipped
    (the ANN RWKV-4 ablation).

    State (tuple): ``(att_shift, aa, bb, pp, ffn_shift, v_att, v_ffn)``, each ``[B, D]``.
    """

    def __init__(self, config, layer_id: int):
        super().__init__()
        D = config.hidden_size
        self.layer_id = layer_id
        self.ln0 = nn.LayerNorm(D, eps=config.layer_norm_eps) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.ln2 = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.att = RWKV4TimeMix(D, layer_id, config.num_hidden_layers)
        self.ffn = RWKV4ChannelMix(D, config.intermediate_size, layer_id, config.num_hidden_layers)
        self.spiking = config.neuron != "none"
        self.lif1 = make_neuron(config) if self.spiking else None
        self.lif2 = make_neuron(config) if self.spiking else None
        self.dropout = nn.Dropout(config.dropout)
        self.spike_rates: dict[str, torch.Tensor] = {}

    def _fire(self, lif: LIF | None, x: torch.Tensor, v: torch.Tensor | None, mask, name: str):
        if lif is None:
            return x, torch.zeros_like(x[:, -1], dtype=torch.float32) if v is None else v
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)  # pads inject no current: v stays at rest
        spikes, v_new = lif(x.transpose(0, 1), v)  # tokens are the neuron's time steps
        spikes = spikes.transpose(0, 1)
        self.spike_rates[name] = spikes.detach().float().mean()
        return spikes, v_new

    def forward(self, x: torch.Tensor, state: tuple | None = None, mask: torch.Tensor | None = None):
        """``x [B, L, D]``, optional state, ``mask [B, L]`` -> ``(x [B, L, D], new state)``."""
        if self.ln0 is not None:
            x = self.ln0(x)
        att_state = None if state is None else state[:4]
        out, att_state = self.att(self.ln1(x), att_state, mask)
        s, v_att = self._fire(self.lif1, out, None if state is None else state[5], mask, "att")
        x = x + s.to(x.dtype)
        out, ffn_shift = self.ffn(self.ln2(x), None if state is None else state[4], mask)
        s, v_ffn = self._fire(self.lif2, out, None if state is None else state[6], mask, "ffn")
        x = self.dropout(x + s.to(x.dtype))
        return x, (*att_state, ffn_shift, v_att, v_ffn)
