"""Spike statistics of a spikelm model, per neuron site and per layer, measured with forward hooks.

Sites (found by module type, so every layout is covered without touching the model code):

* ``"lif"``: every :class:`spikelm.neurons.LIF` / ``PLIF`` (block-output neurons ``lif1``/``lif2``,
  Spikformer's ``q_lif``/``k_lif``/``v_lif``/``attn_lif``, the spiking MLP's ``lif``). Their
  output ``spikes [T, ..., N]`` is binary; the last axis indexes the neurons.
* ``"adaptive"``: every :class:`spikelm.neurons.AdaptiveSpike` (SpikingBrain's adaptive neuron on
  projection inputs, e.g. ``in_spike``/``o_spike``/``down_spike``) with ``mode != "off"``;
  the statistics are those of its integer spike counts ``round(x / v_th)`` (Eqs. 19-23),
  recomputed from the hooked input with :func:`spikelm.kernels.adaptive_spike.spike_counts`.

Definitions (the usual SNN activity statistics: the spike rate / firing rate of Spikformer
and SpikeGPT, the sparsity of SpikingBrain's report), over ``M`` token positions (batch x
length) and ``N`` neurons of a site, with ``s [M, N]`` the spikes (binary) or spike counts
(integer):

* ``spike_rate`` = mean ``|s|`` (spikes per neuron per token; = mean of ``s`` for binary);
* ``sparsity`` = 1 - fraction of nonzero entries;
* ``dead_fraction`` = fraction of neurons whose ``s`` is 0 at every position;
* ``saturated_fraction`` = fraction of neurons with ``s != 0`` at every position;
* ``spikes_per_token`` = ``sum |s| / M`` (spikes emitted by the whole site per token).

Padding is not excluded: evaluate unpadded inputs.
"""
from __future__ import annotations

import torch
from torch import nn

from ..kernels.adaptive_spike import spike_counts
from ..neurons import LIF, AdaptiveSpike


def site_stats(spikes: torch.Tensor) -> dict:
    """Statistics of one site from its spikes ``[M, N]`` (any dtype; binary or integer counts).

    Returns ``{"spike_rate", "sparsity", "dead_fraction", "saturated_fraction",
    "spikes_per_token"}`` (floats) and ``"neurons": N``, ``"tokens": M``.
    Raises ValueError for a tensor that is not 2-D or is empty.
    """
    if spikes.dim() != 2 or spikes.numel() == 0:
        raise ValueError(f"expected non-empty spikes [M, N], got shape {tuple(spikes.shape)}")
    acc = _Accumulator()
    acc.add(spikes)
    return acc.result()


class _Accumulator:
    """Running sums of one site over several forward calls."""

    def __init__(self):
        self.tokens, self.abs_sum, self.nonzero = 0, 0.0, 0
        self.fired: torch.Tensor | None = None    # [N] positions where each neuron fired
        self.neurons = 0

    def add(self, s: torch.Tensor) -> None:
        s = s.detach().reshape(-1, s.shape[-1]).float()
        nz = s != 0
        per_neuron = nz.sum(0).to(torch.float64).cpu()
        self.fired = per_neuron if self.fired is None else self.fired + per_neuron
        self.tokens += s.shape[0]
        self.neurons = s.shape[1]
        self.abs_sum += s.abs().sum().item()
        self.nonzero += int(nz.sum().item())

    def result(self) -> dict:
        M, N = self.tokens, self.neurons
        return {"spike_rate": self.abs_sum / (M * N), "sparsity": 1.0 - self.nonzero / (M * N),
                "dead_fraction": (self.fired == 0).double().mean().item(),
                "saturated_fraction": (self.fired == M).double().mean().item(),
                "spikes_per_token": self.abs_sum / M, "neurons": N, "tokens": M}


def spike_sites(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """``{module name: (kind, module)}`` of the spiking sites of ``model`` (kind ``"lif"`` or
    ``"adaptive"``; adaptive sites with ``mode == "off"`` are left out)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LIF):
            out[name] = ("lif", mod)
        elif isinstance(mod, AdaptiveSpike) and mod.mode != "off":
            out[name] = ("adaptive", mod)
    return out


class SpikeMonitor:
    """Context manager that hooks every spiking site of ``model`` and accumulates statistics.

    ``with SpikeMonitor(model) as mon: model(ids)``; then ``mon.stats()``. Hooks are removed on
    exit. ``on_spikes(name, kind, spikes)`` is called for every site output (spikes or
    integer counts, neuron axis last): a hook for other tools (:mod:`spikelm.eval.energy`).
    """

    def __init__(self, model: nn.Module, on_spikes=None):
        self.model, self.on_spikes = model, on_spikes
        self.sites = spike_sites(model)
        self._acc = {name: _Accumulator() for name in self.sites}
        self._handles: list = []

    def _hook(self, name: str, kind: str):
        def hook(mod, args, output):
            if kind == "lif":
                s = output[0]
            else:
                s, _ = spike_counts(args[0].detach(), mod.k, mod.max_count)
            self._acc[name].add(s)
            if self.on_spikes is not None:
                self.on_spikes(name, kind, s, output if kind == "adaptive" else output[0])
        return hook

    def __enter__(self) -> "SpikeMonitor":
        for name, (kind, mod) in self.sites.items():
            self._handles.append(mod.register_forward_hook(self._hook(name, kind)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def stats(self) -> dict[str, dict]:
        """``{site name: {"kind", **site_stats}}`` for the sites that ran."""
        return {n: {"kind": self.sites[n][0], **a.result()} for n, a in self._acc.items() if a.tokens}


def layer_summary(stats: dict[str, dict]) -> dict[str, dict]:
    """Per-layer aggregate of :meth:`SpikeMonitor.stats`: sites named ``...blocks.{i}...`` are
    grouped by ``"layers.{i}"`` (others under their own name) and combined weighted by
    ``tokens * neurons``: ``{"spike_rate", "sparsity", "dead_fraction", "saturated_fraction"
    (these two weighted by neurons), "spikes_per_token" (summed over sites), "sites"}``."""
    groups: dict[str, list[dict]] = {}
    for name, st in stats.items():
        parts = name.split(".")
        key = f"layers.{parts[parts.index('blocks') + 1]}" if "blocks" in parts else name
        groups.setdefault(key, []).append(st)
    out = {}
    for key, sts in groups.items():
        w = [s["tokens"] * s["neurons"] for s in sts]
        n = [s["neurons"] for s in sts]
        out[key] = {"spike_rate": sum(s["spike_rate"] * x for s, x in zip(sts, w)) / sum(w),
                    "sparsity": sum(s["sparsity"] * x for s, x in zip(sts, w)) / sum(w),
                    "dead_fraction": sum(s["dead_fraction"] * x for s, x in zip(sts, n)) / sum(n),
                    "saturated_fraction": sum(s["saturated_fraction"] * x for s, x in zip(sts, n)) / sum(n),
                    "spikes_per_token": sum(s["spikes_per_token"] for s in sts), "sites": len(sts)}
    return out


@torch.no_grad()
def spike_statistics(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 16) -> dict:
    """Run ``model`` on ``input_ids [B, L]`` (int64, unpadded) and measure every spiking site.

    Returns ``{"sites": {name: stats}, "layers": layer_summary, "overall": {"spike_rate",
    "sparsity" (weighted by tokens x neurons over all sites), "spikes_per_token" (all sites)}}``;
    ``"overall"`` is empty for a model without spiking sites (e.g. a plain HF LM).
    Raises ValueError when ``input_ids`` is not 2-D.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"expected input_ids [B, L], got shape {tuple(input_ids.shape)}")
    device = next(model.parameters()).device
    with SpikeMonitor(model) as mon:
        for s in range(0, input_ids.shape[0], batch_size):
            model(input_ids=input_ids[s:s + batch_size].to(device), use_cache=False)
    return summarize_sites(mon.stats())


def summarize_sites(sites: dict[str, dict]) -> dict:
    """``{"sites", "layers", "overall"}`` of :meth:`SpikeMonitor.stats` (see :func:`spike_statistics`)."""
    overall = {}
    if sites:
        w = {n: s["tokens"] * s["neurons"] for n, s in sites.items()}
        tw = sum(w.values())
        overall = {"spike_rate": sum(s["spike_rate"] * w[n] for n, s in sites.items()) / tw,
                   "sparsity": sum(s["sparsity"] * w[n] for n, s in sites.items()) / tw,
                   "spikes_per_token": sum(s["spikes_per_token"] for s in sites.values())}
    return {"sites": sites, "layers": layer_summary(sites), "overall": overall}
