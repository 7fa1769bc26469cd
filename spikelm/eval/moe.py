"""Routing statistics of mixture-of-experts layers measured during evaluation: expert load,
dropped assignments and the routing (macro) sparsity next to the spike (micro) sparsity."""
from __future__ import annotations

import torch
from torch import nn


def moe_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The MoE MLPs of ``model`` (modules with ``moe_stats`` and ``num_experts``, i.e.
    :class:`spikelm.layers.moe.SpikingMoE`) by module name; ``{}`` for a dense model."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "moe_stats") and hasattr(m, "num_experts")}


class MoEMonitor:
    """Accumulates the routing of every MoE layer over the forward passes run inside the block.

    ``with MoEMonitor(model) as mon: model(...)`` then ``mon.summary()``. Each forward adds the
    layer's kept assignments per expert (``expert_load`` times the kept count) and its dropped
    share, weighted by the assignments of that call.
    """

    def __init__(self, model: nn.Module):
        self.modules = moe_modules(model)
        self.kept: dict[str, torch.Tensor] = {}
        self.assigned: dict[str, float] = {}
        self.dropped: dict[str, float] = {}
        self.handles: list = []

    def __enter__(self) -> MoEMonitor:
        for name, mod in self.modules.items():
            self.handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, name: str):
        def hook(mod, args, output):
            x = args[0]
            mask = args[2] if len(args) > 2 else None
            tokens = x.shape[0] * x.shape[1] if mask is None else int(mask.sum())
            n = float(tokens * mod.top_k)
            st = mod.moe_stats
            dropped = float(st["dropped"])
            kept = st["expert_load"].detach().float().cpu() * n * (1.0 - dropped)
            self.kept[name] = self.kept.get(name, torch.zeros_like(kept)) + kept
            self.assigned[name] = self.assigned.get(name, 0.0) + n
            self.dropped[name] = self.dropped.get(name, 0.0) + dropped * n
        return hook

    def summary(self) -> dict:
        """``{"layers": {name: {"experts", "top_k", "expert_load": [share per expert], "max_load",
        "min_load", "dropped_fraction"}}, "active_expert_fraction": k / E (mean over layers),
        "routing_sparsity": 1 - k / E, "dropped_fraction"}``; ``{}`` without MoE layers or calls."""
        layers = {}
        for name, mod in self.modules.items():
            if name not in self.kept:
                continue
            kept = self.kept[name]
            load = (kept / kept.sum().clamp_min(1e-12)).tolist()
            layers[name] = {"experts": mod.num_experts, "top_k": mod.top_k, "expert_load": load,
                            "max_load": max(load), "min_load": min(load),
                            "dropped_fraction": self.dropped[name] / max(self.assigned[name], 1.0)}
        if not layers:
            return {}
        active = sum(self.modules[n].active_fraction for n in layers) / len(layers)
        dropped = sum(self.dropped.values()) / max(sum(self.assigned.values()), 1.0)
        return {"layers": layers, "active_expert_fraction": active, "routing_sparsity": 1.0 - active,
                "dropped_fraction": dropped}
