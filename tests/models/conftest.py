"""Helpers shared by the model tests."""
import torch

from spikelm.layers import state_tensors


def spiking_weights(model, std: float = 0.5):
    """Redraw every weight matrix from ``N(0, std)``: larger weights than the init, so that the
    neurons spike and the logits differ. Returns ``model``."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    return model


def cache_tensors(cache) -> list[list[torch.Tensor]]:
    """The state tensors of each layer of a ``SpikeLMCache`` (``BlockState`` flattened)."""
    return [state_tensors(layer) for layer in cache.layers]


def cache_numel(cache) -> int:
    """Number of elements held by a ``SpikeLMCache``."""
    return sum(t.numel() for layer in cache_tensors(cache) for t in layer)
