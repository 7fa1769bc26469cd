"""ANN -> spiking conversion: Hugging Face Llama-family checkpoints (Llama, Qwen2/2.5, Qwen3,
Mistral) into spikelm checkpoints (SpikingBrain technical report, arXiv:2509.05276).

``convert_checkpoint(src_dir, out_dir, layout=..., spiking=...)`` does the whole job;
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

__all__ = ["ARCHITECTURES", "LAYOUTS", "REPORT_NAME", "SPIKING_MODES", "ConversionError", "convert_checkpoint",
           "convert_config", "gla_init_tensors", "map_tensor"]
