"""spikelm: distributed training of spiking language models.

Importing ``spikelm`` registers ``SpikeLMConfig`` / ``SpikeLMForCausalLM`` /
``SpikeLMForSequenceClassification`` with the transformers Auto classes.
"""
from .models import SpikeLMConfig, SpikeLMForCausalLM, SpikeLMModel, flavour_config
from .models import SpikeLMForSequenceClassification

__version__ = "0.1.0"
__all__ = ["SpikeLMConfig", "SpikeLMForCausalLM", "SpikeLMForSequenceClassification", "SpikeLMModel",
           "__version__", "flavour_config"]
