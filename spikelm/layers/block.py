"""The generic spikelm block: per-layer token mixer, MLP and block-output neurons."""
from __future__ import annotations

import torch
from torch import nn

from .channel_mix import RWKV4ChannelMix
from .common import fire_tokens, make_neuron, make_norm
from .gla import SpikingGLA
from .mlp import SpikingMLP, SwiGLU
from .ssa import SpikingSelfAttention
from .swa import SlidingWindowAttention
from .time_mix import RWKV4TimeMix


def build_mixer(config, layer_id: int, kind: str | None = None) -> nn.Module:
    """The token mixer of layer ``layer_id`` (``kind`` overrides ``config.mixer_types[layer_id]``).

    Returns one of ``RWKV4TimeMix`` (SpikeGPT), ``SpikingSelfAttention`` (``"ssa"``/``"sdsa"``),
    ``SpikingGLA`` (``"gla"``) or ``SlidingWindowAttention`` (``"swa"``).
    Raises ValueError for an unknown kind (listing the accepted ones).
    """
    kind = kind or config.mixer_types[layer_id]
    if kind == "rwkv4":
        return RWKV4TimeMix(config.hidden_size, layer_id, config.num_hidden_layers)
    if kind in ("ssa", "sdsa"):
        return SpikingSelfAttention(config, kind)
    if kind == "gla":
        return SpikingGLA(config)
    if kind == "swa":
        return SlidingWindowAttention(config)
    raise ValueError(f"unknown mixer type {kind!r}; accepted: rwkv4, ssa, sdsa, gla, swa")


def build_mlp(config, layer_id: int, kind: str | None = None) -> nn.Module:
    """The MLP of layer ``layer_id`` (``kind`` overrides ``config.mlp_types[layer_id]``):
    ``RWKV4ChannelMix`` (``"channel_mix"``), ``SwiGLU`` or ``SpikingMLP`` (``"spiking_mlp"``).
    Raises ValueError for an unknown kind."""
    kind = kind or config.mlp_types[layer_id]
    if kind == "channel_mix":
        return RWKV4ChannelMix(config.hidden_size, config.intermediate_size, layer_id, config.num_hidden_layers)
    if kind == "swiglu":
        return SwiGLU(config)
    if kind == "spiking_mlp":
        return SpikingMLP(config)
    raise ValueError(f"unknown mlp type {kind!r}; accepted: channel_mix, swiglu, spiking_mlp")


class SpikeLMBlock(nn.Module):
    """Pre-norm residual block with a per-layer mixer, MLP and output neurons:
    ``x = x + N1(Mixer(norm1(x)))``, ``x = x + N2(MLP(norm2(x)))``.

    ``N1, N2`` are LIF/PLIF neurons run along the token axis (SpikeGPT, Zhu et al. 2023: tokens
    are the neurons' time steps; their membrane potentials are recurrent state), or the
    identity for ``neuron_types[layer_id] == "none"`` (SpikingBrain-style layers, whose
    spiking is the adaptive neuron on projection inputs). Layer 0 also normalises its input
    (``ln0``) when ``config.embed_norm`` (SpikeGPT). With ``mixer_types = "rwkv4"`` and
    ``mlp_types = "channel_mix"`` this is exactly SpikeGPT's block, with SpikeGPT's parameter
    names (``ln0, ln1, att, lif1, ln2, ffn, lif2``).

    Args:
        config: ``SpikeLMConfig``. layer_id: index in the stack.
        mixer, mlp, embed_norm: overrides of the config's choices for this layer.
    State (flat tuple, batch first): ``(*mixer state, *mlp state[, v_att, v_ffn [B, D] fp32])``
    with the sizes given by each module's ``state_size`` (rwkv4: ``shift, aa, bb, pp``;
    channel_mix: ``shift``; see each layer's docstring).
    """

    def __init__(self, config, layer_id: int, mixer: str | None = None, mlp: str | None = None,
                 embed_norm: bool | None = None):
        super().__init__()
        D, eps = config.hidden_size, config.layer_norm_eps
        self.layer_id = layer_id
        self.mixer_type = mixer or config.mixer_types[layer_id]
        self.mlp_type = mlp or config.mlp_types[layer_id]
        embed_norm = config.embed_norm if embed_norm is None else embed_norm
        self.ln0 = make_norm(config.norm_type, D, eps) if (layer_id == 0 and embed_norm) else None
        self.ln1 = make_norm(config.norm_type, D, eps)
        self.ln2 = make_norm(config.norm_type, D, eps)
        self.att = build_mixer(config, layer_id, self.mixer_type)
        self.ffn = build_mlp(config, layer_id, self.mlp_type)
        neuron = config.neuron_types[layer_id]
        self.spiking = neuron != "none"
        self.lif1 = make_neuron(config, neuron) if self.spiking else None
        self.lif2 = make_neuron(config, neuron) if self.spiking else None
        self.dropout = nn.Dropout(config.dropout)
        self.spike_rates: dict[str, torch.Tensor] = {}
        self.n_att, self.n_ffn = self.att.state_size, self.ffn.state_size

    def _fire(self, lif, x: torch.Tensor, v: torch.Tensor | None, mask, name: str):
        spikes, v_new = fire_tokens(lif, x, v, mask)
        self.spike_rates[name] = spikes.detach().float().mean()
        return spikes, v_new

    def forward(self, x: torch.Tensor, state: tuple | None = None, mask: torch.Tensor | None = None):
        """``x [B, L, D]``, optional state (a previous call's), ``mask [B, L]`` (1 = token, 0 =
        left padding) -> ``(x [B, L, D], new state)``."""
        na, nf = self.n_att, self.n_ffn
        if self.ln0 is not None:
            x = self.ln0(x)
        att_state = None if state is None else tuple(state[:na])
        out, att_state = self.att(self.ln1(x), att_state, mask)
        neurons = ()
        if self.spiking:
            out, v_att = self._fire(self.lif1, out, None if state is None else state[na + nf], mask, "att")
            neurons += (v_att,)
        x = x + out.to(x.dtype)
        h = self.ln2(x)
        if self.mlp_type == "channel_mix":
            out, shift = self.ffn(h, None if state is None else state[na], mask)
            ffn_state = (shift,)
        else:
            out, ffn_state = self.ffn(h, None if state is None else tuple(state[na:na + nf]), mask)
        if self.spiking:
            out, v_ffn = self._fire(self.lif2, out, None if state is None else state[na + nf + 1], mask, "ffn")
            neurons += (v_ffn,)
        x = self.dropout(x + out.to(x.dtype))
        for prefix, mod in (("att", self.att), ("ffn", self.ffn)):
            for k, v in getattr(mod, "spike_rates", {}).items():
                self.spike_rates[f"{prefix}.{k}"] = v
        return x, (*att_state, *ffn_state, *neurons)
