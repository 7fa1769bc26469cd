"""SpikeGPT block: pre-LayerNorm residual block with a LIF neuron after each sub-block."""
from __future__ import annotations

from .block import SpikeLMBlock
from .common import make_neuron

__all__ = ["SpikeGPTBlock", "make_neuron"]


class SpikeGPTBlock(SpikeLMBlock):
    """``x = x + LIF(TimeMix(LN(x)))``; ``x = x + LIF(ChannelMix(LN(x)))`` (Zhu et al. 2023, SpikeGPT).

    :class:`SpikeLMBlock` with SpikeGPT's layout forced (RWKV-4 time-mix and channel-mix, ``ln0``
    at layer 0) whatever ``config.mixer_types`` / ``mlp_types`` say. The LIF neurons run along
    the token axis; with ``config.neuron == "none"`` they are skipped (the ANN RWKV-4 ablation).

    State (tuple): ``(att_shift, aa, bb, pp, ffn_shift[, v_att, v_ffn])``, each ``[B, D]``
    (the membrane potentials only when the block spikes).
    """

    def __init__(self, config, layer_id: int):
        super().__init__(config, layer_id, mixer="rwkv4", mlp="channel_mix", embed_norm=True)
