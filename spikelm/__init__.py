"""spikelm: distributed training of spiking language models.

Importing ``spikelm`` registers ``SpikeLMConfig`` / ``SpikeLMForCausalLM`` with the
transformers Auto classes.
"""
from .models import SpikeLMConfig, SpikeLMForCausalLM, SpikeLMModel, flavour_config

__version__ = "0.1.0"
__all__ = ["SpikeLMConfig", "SpikeLMForCausalLM", "SpikeLMModel", "flavour_config", "__version__"]
