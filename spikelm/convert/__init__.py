"""Conversion into spikelm checkpoints: Hugging Face Llama-family checkpoints (Llama, Qwen2/2.5,
Qwen3, Mistral, and the MoE models Mixtral and Qwen2-MoE; SpikingBrain technical report,
arXiv:2509.05276), SpikeGPT ``.pth`` files, transformers RWKV-4 and SpikingBrain-7B (``gla_swa``);
upcycling of dense SwiGLU MLPs into mixture-of-experts ones (``moe.py``).

``convert_any(src, out_dir, ...)`` (``sources.py``) recognises the source and calls its
converter; ``convert_checkpoint(src_dir, out_dir, layout=..., spiking=...)`` does the Llama family;
``convert_config`` only translates the configuration; ``spikelm convert`` is the command line
(:func:`spikelm.cli.convert.cmd_convert`).
"""
from .convert import REPORT_NAME, convert_checkpoint, gla_init_tensors
from .mapping import (
           ARCHITECTURES,
           LAYOUTS,
           SPIKING_MODES,
           ConversionError,
           convert_config,
           map_tensor,
)
from .moe import upcycle_spikelm
from .rwkv import convert_rwkv
from .sources import SOURCE_KINDS, convert_any, source_kind
from .spikegpt import convert_spikegpt
from .spikingbrain import convert_spikingbrain

__all__ = ["ARCHITECTURES", "LAYOUTS", "REPORT_NAME", "SOURCE_KINDS", "SPIKING_MODES", "ConversionError",
           "convert_any", "convert_checkpoint", "convert_config", "convert_rwkv", "convert_spikegpt",
           "convert_spikingbrain", "gla_init_tensors", "map_tensor", "source_kind", "upcycle_spikelm"]
