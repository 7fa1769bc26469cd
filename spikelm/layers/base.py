"""The interface every token mixer and MLP of spikelm implements, and helpers for their states.

A layer kind (``"gla"``, ``"swiglu"``, ...) is a :class:`SpikeLMLayer` subclass listed in
:mod:`spikelm.layers.registry`; the block, the config, the FLOPs counter and the converter
read everything they need about it from the class:

* ``forward(x [B, L, D], state: State | None, mask [B, L] | None) -> (out [B, L, D], State)``;
  ``mask`` is 1 for a token and 0 for left padding, and padded positions leave no trace in
  the state; running a sequence in one call or in chunks gives the same outputs and state;
* ``State``: a ``typing.NamedTuple`` of batch-first tensors (``[B, ...]``), the layer's whole
  recurrent state (an empty NamedTuple for a token-wise layer);
* ``spike_sites``: the keys the layer writes into ``self.spike_rates`` on each forward call;
* ``from_config(config, layer_id)``, ``check_config(config)``, ``flops_per_token(config,
  context)`` and ``init_values()`` (classmethods / method, defaults below).

See docs/architecture.md, sections "State interface" and "Adding a mixer".
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn


class SpikeLMLayer(nn.Module):
    """Base class of the token mixers and MLPs (see the module docstring for the contract).

    Class attributes:
        State: the ``NamedTuple`` type of the recurrent state returned by ``forward``.
        spike_sites: names of the statistics written into ``self.spike_rates`` (0-dim tensors):
            a spike rate (mean of binary spikes) or, for names ending in ``.sparsity``, the
            fraction of zero spike counts of an adaptive spiking input.
        uses_head_dim: the layer uses ``config.head_dim`` (so ``SpikeLMConfig``'s default
            ``hidden_size // num_attention_heads`` needs an exact division).
        embed_norm: layer 0 of this kind normalises the embedding by default (SpikeGPT's ``ln0``).
    """

    State: ClassVar[type[tuple]] = tuple
    spike_sites: ClassVar[tuple[str, ...]] = ()
    uses_head_dim: ClassVar[bool] = False
    embed_norm: ClassVar[bool] = False

    def __init__(self):
        super().__init__()
        self.spike_rates: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config, layer_id: int) -> "SpikeLMLayer":
        """The layer of ``layer_id`` described by a ``SpikeLMConfig`` (default: ``cls(config)``)."""
        return cls(config)

    @classmethod
    def check_config(cls, config) -> None:
        """Raise ``ValueError`` when ``config`` cannot build this layer (called by ``SpikeLMConfig``)."""

    @classmethod
    def flops_per_token(cls, config, context: int) -> float:
        """Training FLOPs per token (forward + backward) of the layer beyond its ``nn.Linear``
        modules (counted by :func:`spikelm.train.flops.model_flops_per_token`), at a training
        context of ``context`` tokens. Default 0: element-wise work is not counted."""
        return 0.0

    def init_values(self) -> dict[str, torch.Tensor]:
        """Initial values of parameters with a non-generic init, by parameter name (used by
        ``SpikeLMPreTrainedModel._init_weights``). Default: none."""
        return {}

    def _record_sparsity(self, *sites: tuple[str, nn.Module]) -> None:
        """Store ``site.sparsity`` of each ``(name, SpikingInput)`` as ``spike_rates[f"{name}.sparsity"]``."""
        for name, mod in sites:
            if mod.sparsity is not None:
                self.spike_rates[f"{name}.sparsity"] = mod.sparsity


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state):
    """Apply ``fn`` to every tensor of a (nested) NamedTuple state, keeping its types; None stays None.

    E.g. ``map_state(lambda t: t.index_select(0, idx), block_state)`` selects batch rows.
    """
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    items = [map_state(fn, s) for s in state]
    return type(state)(*items) if hasattr(state, "_fields") else type(state)(items)


def state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a (nested) state in field order, ``None`` fields skipped (e.g. to count its size)."""
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in state_tensors(s)]


def attention_dims(config) -> tuple[int, int]:
    """``(heads, head_dim)`` of a config, with ``SpikeLMConfig``'s defaults for missing fields
    (``max(1, hidden_size // 64)`` heads of ``hidden_size // heads``); works on any object with
    ``hidden_size`` (e.g. the ``SimpleNamespace`` the trainer builds for a Llama)."""
    heads = getattr(config, "num_attention_heads", None) or max(1, config.hidden_size // 64)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, head_dim
