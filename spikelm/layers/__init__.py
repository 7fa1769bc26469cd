"""Token mixers, MLPs and blocks of spiking language models."""
from .channel_mix import RWKV4ChannelMix
from .spikegpt_block import SpikeGPTBlock
from .time_mix import RWKV4TimeMix
from .token_shift import mix, token_shift

__all__ = ["RWKV4TimeMix", "RWKV4ChannelMix", "SpikeGPTBlock", "token_shift", "mix"]
