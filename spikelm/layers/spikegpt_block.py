"""SpikeGPT block: pre-LayerNorm residual block with a LIF neuron after each sub-block."""
from __future__ import annotations

from .block import SpikeLMBlock
from .channel_mix import RWKV4ChannelMix
from .common import make_neuron
from .registry import kind_of
from .time_mix import RWKV4TimeMix

__all__ = ["SpikeGPTBlock", "make_neuron"]


class SpikeGPTBlock(SpikeLMBlock):
    """``x = x + LIF(TimeMix(LN(x)))``; ``x = x + LIF(ChannelMix(LN(x)))`` (Zhu et al. 2023, SpikeGPT).

    :class:`SpikeLMBlock` with SpikeGPT's layout forced (RWKV-4 time-mix and channel-mix, ``ln0``
    at layer 0) whatever ``config.mixer_types`` / ``mlp_types`` say. The LIF neurons run along
    the token axis; with ``config.neuron == "none"`` they are skipped (the ANN RWKV-4 ablation).

    State: ``BlockState(mixer=RWKV4State(shift, aa, bb, pp), mlp=ChannelMixState(shift), v_att,
    v_ffn)``, each tensor ``[B, D]`` (the membrane potentials None when the block does not spike).
    """

    def __init__(self, config, layer_id: int):
        super().__init__(config, layer_id, mixer=kind_of(RWKV4TimeMix), mlp=kind_of(RWKV4ChannelMix), embed_norm=True)
