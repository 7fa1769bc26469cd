"""Helpers shared by the model tests."""
import torch

from spikelm.layers import state_tensors

from ..conftest import spiking_weights  # noqa: F401  (re-exported for the model tests)


def cache_tensors(cache) -> list[list[torch.Tensor]]:
    """The state tensors of each layer of a ``SpikeLMCache`` (``BlockState`` flattened)."""
    return [state_tensors(layer) for layer in cache.layers]


def cache_numel(cache) -> int:
    """Number of elements held by a ``SpikeLMCache``."""
    return sum(t.numel() for layer in cache_tensors(cache) for t in layer)
