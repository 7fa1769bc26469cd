"""Sparsity as a training target: a spike-rate regulariser on the block-output neurons.

With ``train.spike_rate_weight: w > 0`` the loss gains ``w * mean_sites (r_site - r*)^2``, with
``r_site`` the spike rate (mean of the spikes, through the surrogate gradient) of each
block-output neuron site (``layers.{i}.att`` / ``layers.{i}.ffn``) in the step's forward pass and
``r* = train.spike_rate_target`` (sparsity ``1 - r*``). The penalty pulls every site towards
the target from either side (a firing-rate regulariser as in Zenke & Vogels 2021, "The
remarkable robustness of surrogate gradient learning", Eq. 6, in its two-sided quadratic form).
It is logged as ``spike_rate_penalty`` (the unweighted mean square), apart from the loss.
"""
from __future__ import annotations

import torch
from torch import nn


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "rate_tensors") and hasattr(m, "rate_grad")]


def enable_rate_grads(model: nn.Module) -> int:
    """Make every spikelm block of ``model`` keep its output neurons' spike rates with their
    gradient (``SpikeLMBlock.rate_grad``). Returns the number of blocks with output neurons.
    Raises ValueError when there are none (e.g. a SpikingBrain-style layout without LIF)."""
    blocks = [b for b in _blocks(model) if getattr(b, "spiking", False)]
    if not blocks:
        raise ValueError("train.spike_rate_weight needs block-output LIF/PLIF neurons (model.neuron lif or plif); "
                         "this model has none")
    for b in blocks:
        b.rate_grad = True
    return len(blocks)


def take_spike_rate_penalty(model: nn.Module, target: float) -> torch.Tensor | None:
    """``mean_sites (rate - target)^2`` over the rates the blocks kept in the last forward pass
    (0-dim float32, with gradient), clearing them; None when none were kept."""
    rates = []
    for b in _blocks(model):
        rates += list(b.rate_tensors.values())
        b.rate_tensors = {}
    if not rates:
        return None
    return (torch.stack(rates) - target).square().mean()
