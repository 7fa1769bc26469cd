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


class KAnnealing:
    """``k`` of every adaptive spiking neuron annealed linearly over training (``train.adaptive_k_anneal_to``).

    SpikingBrain's adaptive neuron fires ``round(x / v_th)`` with ``v_th = mean(|x|) / k``
    (report Eqs. 19-23), so its mean count is about ``k`` whatever the weights: its sparsity is
    a choice, not something the loss learns. Annealing ``k`` from ``k_start`` (the model's
    ``adaptive_spike_k``) to ``k_end`` over ``steps`` optimizer steps lets the model adapt to a
    sparser code gradually: at step ``s`` (0-based) ``k = k_start + (k_end - k_start) *
    min(1, s / (steps - 1))``, so the last annealed step already trains with ``k_end``. The
    model config's ``adaptive_spike_k`` follows, so an export records the ``k`` it was left with.

    Args: model (its ``AdaptiveSpike`` modules are set), config (``SpikeLMConfig``; ``k_start``
    is read from it once, at construction), k_end (> 0), steps (>= 1).
    Raises:
        ValueError: a model without adaptive spiking (``adaptive_spike_mode`` off).
    """

    def __init__(self, model: nn.Module, config, k_end: float, steps: int):
        from ..neurons import AdaptiveSpike

        self.neurons = [m for m in model.modules() if isinstance(m, AdaptiveSpike) and m.mode != "off"]
        if not self.neurons:
            raise ValueError("train.adaptive_k_anneal_to needs adaptive spiking neurons (model.adaptive_spike_mode ste "
                             "or expanded); this model has none")
        self.config, self.k_start, self.k_end, self.steps = config, float(config.adaptive_spike_k), k_end, steps

    def k(self, step: int) -> float:
        """``k`` at optimizer step ``step`` (0-based)."""
        frac = 1.0 if self.steps <= 1 else min(1.0, step / (self.steps - 1))
        return self.k_start + (self.k_end - self.k_start) * frac

    def apply(self, step: int) -> float:
        """Set ``k(step)`` on every adaptive neuron and in the config; returns it."""
        k = self.k(step)
        for m in self.neurons:
            m.k = k
        self.config.adaptive_spike_k = k
        return k
