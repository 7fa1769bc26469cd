"""Hugging Face classes of spikelm, registered with the Auto classes on import."""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .classification import SpikeLMForSequenceClassification
from .configuration_spikelm import SpikeLMConfig
from .flavours import FLAVOURS, flavour_config
from .modeling_spikelm import SpikeLMCache, SpikeLMForCausalLM, SpikeLMModel, SpikeLMPreTrainedModel

AutoConfig.register("spikelm", SpikeLMConfig, exist_ok=True)
AutoModel.register(SpikeLMConfig, SpikeLMModel, exist_ok=True)
AutoModelForCausalLM.register(SpikeLMConfig, SpikeLMForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(SpikeLMConfig, SpikeLMForSequenceClassification, exist_ok=True)

__all__ = ["SpikeLMConfig", "SpikeLMModel", "SpikeLMForCausalLM", "SpikeLMForSequenceClassification",
           "SpikeLMPreTrainedModel", "SpikeLMCache", "FLAVOURS", "flavour_config"]
