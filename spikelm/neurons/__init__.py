"""Spiking neurons: multi-step LIF / PLIF and SpikingBrain's adaptive integer neuron.

The modules hold parameters and call the ops in ``spikelm.kernels`` (one dispatch point:
Triton on CUDA, torch on CPU).
"""
from ..kernels.lif import SURROGATES, heaviside, surrogate_grad
from .adaptive import AdaptiveSpike
from .lif import LIF, PLIF

__all__ = ["LIF", "PLIF", "AdaptiveSpike", "heaviside", "surrogate_grad", "SURROGATES"]
