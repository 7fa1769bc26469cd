"""The generic spikelm block: per-layer token mixer, MLP and block-output neurons."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..kernels.lif.residual import lif_residual
from ..neurons import LIF, PLIF
from .base import SpikeLMLayer
from .common import fire_tokens, make_neuron, make_norm
from .registry import mixer_class, mlp_class


class BlockState(NamedTuple):
    """Recurrent state of a :class:`SpikeLMBlock` (one layer of the generation cache).

    Attributes:
        mixer: the token mixer's state, its class's ``State`` (e.g. ``RWKV4State(shift, aa, bb,
            pp)``, ``GLAState(S)``, ``SWAState(k_cache, v_cache, pos)``).
        mlp: the MLP's state (e.g. ``ChannelMixState(shift)``, ``SwiGLUState()``).
        v_att, v_ffn: membrane potentials ``[B, D]`` float32 of the block-output neurons after
            the mixer and the MLP; None in a layer without them (``neuron_types[i] == "none"``).
    """

    mixer: tuple
    mlp: tuple
    v_att: torch.Tensor | None = None
    v_ffn: torch.Tensor | None = None


def build_mixer(config, layer_id: int, kind: str | None = None) -> SpikeLMLayer:
    """The token mixer of layer ``layer_id`` (``kind`` overrides ``config.mixer_types[layer_id]``):
    ``MIXERS[kind].from_config(config, layer_id)`` (:mod:`spikelm.layers.registry`).

    Raises ValueError for an unknown kind (listing the accepted ones).
    """
    return mixer_class(kind or config.mixer_types[layer_id]).from_config(config, layer_id)


def build_mlp(config, layer_id: int, kind: str | None = None) -> SpikeLMLayer:
    """The MLP of layer ``layer_id`` (``kind`` overrides ``config.mlp_types[layer_id]``):
    ``MLPS[kind].from_config(config, layer_id)``. Raises ValueError for an unknown kind."""
    return mlp_class(kind or config.mlp_types[layer_id]).from_config(config, layer_id)


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
    ``forward(x [B, L, D], state: BlockState | None, mask [B, L] | None) -> (x [B, L, D],
    BlockState)``. After each call ``spike_rates`` maps ``"att"``, ``"ffn"`` (the output
    neurons' spike rates, spiking layers only) and ``"att.<site>"``, ``"ffn.<site>"`` (the
    mixer's and MLP's ``spike_sites``) to 0-dim tensors.
    Raises:
        ValueError: an unknown mixer or MLP kind.
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
        self.rate_grad = False  # keep the output neurons' rates with their gradient (spikelm.train.sparsity)
        self.rate_tensors: dict[str, torch.Tensor] = {}

    @property
    def spike_sites(self) -> tuple[str, ...]:
        """Every key ``forward`` may write into ``spike_rates`` (sparsity sites only when spiking is on)."""
        own = ("att", "ffn") if self.spiking else ()
        return own + tuple(f"att.{s}" for s in self.att.spike_sites) + tuple(f"ffn.{s}" for s in self.ffn.spike_sites)

    def _fire(self, lif, x: torch.Tensor, v: torch.Tensor | None, mask, name: str):
        spikes, v_new = fire_tokens(lif, x, v, mask)
        self.spike_rates[name] = spikes.detach().float().mean()
        if self.rate_grad:  # the rate with its surrogate gradient, for a spike-rate regulariser
            self.rate_tensors[name] = spikes.float().mean()
        return spikes, v_new

    def _fire_add(self, lif, res: torch.Tensor, out: torch.Tensor, v: torch.Tensor | None, mask, name: str):
        """``res + lif(out)`` along the tokens and the new potential; records the spike rate.

        Without a mask, one op (``kernels.lif.residual.lif_residual``: a single fused kernel
        each way on the Triton path, the unfused code on the torch path); with a mask (left
        padding), with ``rate_grad`` (the rate must keep its gradient), or a neuron that hooks observe (``spikelm.eval.spikes`` records each neuron
        module's spikes through forward hooks), ``fire_tokens`` and the add.
        """
        observed = bool(lif._forward_hooks or lif._forward_pre_hooks)
        if mask is None and type(lif) in (LIF, PLIF) and not observed and not self.rate_grad:
            out, v_th = lif.scale_input(out)
            y, v_new, rate = lif_residual(res, out, v, lif.tau, v_th, lif.v_reset, lif.decay_input,
                                          lif.detach_reset, lif.surrogate, lif.alpha, time_dim=1)
            self.spike_rates[name] = rate
            return y, v_new
        spikes, v_new = self._fire(lif, out, v, mask, name)
        return res + spikes.to(res.dtype), v_new

    def forward(self, x: torch.Tensor, state: BlockState | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, BlockState]:
        """``x [B, L, D]``, optional state (a previous call's), ``mask [B, L]`` (1 = token, 0 =
        left padding) -> ``(x [B, L, D], new state)``."""
        if state is None:
            state = BlockState(None, None)
        if self.ln0 is not None:
            x = self.ln0(x)
        out, att_state = self.att(self.ln1(x), state.mixer, mask)
        v_att = v_ffn = None
        if self.spiking:  # x + N1(out): the neurons and the residual add in one op
            x, v_att = self._fire_add(self.lif1, x, out, state.v_att, mask, "att")
        else:
            x = x + out.to(x.dtype)
        out, ffn_state = self.ffn(self.ln2(x), state.mlp, mask)
        if self.spiking:
            x, v_ffn = self._fire_add(self.lif2, x, out, state.v_ffn, mask, "ffn")
        else:
            x = x + out.to(x.dtype)
        x = self.dropout(x)
        for prefix, mod in (("att", self.att), ("ffn", self.ffn)):
            for k, v in mod.spike_rates.items():
                self.spike_rates[f"{prefix}.{k}"] = v
        return x, BlockState(att_state, ffn_state, v_att, v_ffn)
