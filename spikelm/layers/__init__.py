"""Token mixers, MLPs and blocks of spiking language models.

Every mixer/MLP has ``forward(x [B, L, D], state | None, mask [B, L] | None) -> (out, new_state)``
with a tuple state whose tensors are batch first; padded positions (``mask == 0``) leave no
trace in it, and running a sequence in one call or token by token gives the same outputs.
"""
from .block import SpikeLMBlock, build_mixer, build_mlp
from .channel_mix import RWKV4ChannelMix
from .common import SpikingInput, SpikingNorm, make_neuron, make_norm
from .gla import SpikingGLA
from .mlp import SpikingMLP, SwiGLU
from .spikegpt_block import SpikeGPTBlock
from .ssa import SpikingSelfAttention
from .swa import SlidingWindowAttention, apply_rope, rope_cos_sin
from .time_mix import RWKV4TimeMix
from .token_shift import mix, token_shift

__all__ = ["RWKV4TimeMix", "RWKV4ChannelMix", "SpikeGPTBlock", "SpikeLMBlock", "SpikingSelfAttention", "SpikingGLA",
           "SlidingWindowAttention", "SwiGLU", "SpikingMLP", "SpikingInput", "SpikingNorm", "build_mixer",
           "build_mlp", "make_neuron", "make_norm", "rope_cos_sin", "apply_rope", "token_shift", "mix"]
