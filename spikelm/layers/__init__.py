"""Token mixers, MLPs and blocks of spiking language models.

Every mixer/MLP is a :class:`SpikeLMLayer` registered under a kind name in
:mod:`spikelm.layers.registry` (``MIXERS``, ``MLPS``), with
``forward(x [B, L, D], state | None, mask [B, L] | None) -> (out, new_state)``; its state is
the NamedTuple ``cls.State`` of batch-first tensors; padded positions (``mask == 0``) leave no
trace in it, and running a sequence in one call or token by token gives the same outputs. A
block's state is a :class:`BlockState` ``(mixer, mlp, v_att, v_ffn)``.
"""
from .base import SpikeLMLayer, map_state, state_tensors
from .block import BlockState, SpikeLMBlock, build_mixer, build_mlp
from .channel_mix import ChannelMixState, RWKV4ChannelMix
from .common import SpikingInput, SpikingNorm, make_neuron, make_norm
from .gla import GLAState, SpikingGLA
from .mlp import SpikingMLP, SpikingMLPState, SwiGLU, SwiGLUState
from .moe import MoEState, SpikingMoE
from .registry import MIXERS, MLPS, kind_of, mixer_class, mlp_class
from .spikegpt_block import SpikeGPTBlock
from .ssa import SpikeDrivenSelfAttention, SpikingAttentionState, SpikingSelfAttention
from .swa import SlidingWindowAttention, SWAState, apply_rope, rope_cos_sin
from .time_mix import RWKV4State, RWKV4TimeMix
from .token_shift import mix, token_shift

__all__ = ["RWKV4TimeMix", "RWKV4ChannelMix", "SpikeGPTBlock", "SpikeLMBlock", "SpikingSelfAttention",
           "SpikeDrivenSelfAttention", "SpikingGLA", "SlidingWindowAttention", "SwiGLU", "SpikingMLP", "SpikingInput",
           "SpikingNorm", "build_mixer", "build_mlp", "make_neuron", "make_norm", "rope_cos_sin", "apply_rope",
           "token_shift", "mix", "SpikeLMLayer", "MIXERS", "MLPS", "mixer_class", "mlp_class", "kind_of",
           "BlockState", "RWKV4State", "ChannelMixState", "SpikingAttentionState", "GLAState", "SWAState",
           "SwiGLUState", "SpikingMLPState", "SpikingMoE", "MoEState", "map_state", "state_tensors"]
