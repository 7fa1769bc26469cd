"""Pieces shared by the spikelm layers: norms, neurons along the token axis, masked helpers,
and adaptive spiking on projection inputs with sparsity statistics."""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import LIF, PLIF, AdaptiveSpike


def make_neuron(config, kind: str | None = None, v_th: float | None = None) -> LIF:
    """The LIF/PLIF neuron described by a ``SpikeLMConfig`` (``lif_*``, ``surrogate*``).

    Args:
        config: a ``SpikeLMConfig``.
        kind: ``"lif"`` or ``"plif"`` (default ``config.neuron``; ``"none"`` is the caller's
            business: it builds no neuron).
        v_th: threshold override (e.g. Spikformer's 0.5 attention neuron).
    Returns:
        ``LIF`` (SpikingJelly semantics, Fang et al.) or ``PLIF`` (Fang et al. 2021).
    Raises:
        ValueError: bad LIF parameters (from ``LIF``).
    """
    kind = kind or config.neuron
    v_th = config.lif_v_th if v_th is None else v_th
    v_reset = config.lif_v_reset
    if v_reset is not None and v_reset >= v_th:
        v_reset = 0.0 if v_th > 0 else None
    kw = dict(v_th=v_th, v_reset=v_reset, decay_input=config.lif_decay_input,
              detach_reset=config.lif_detach_reset, surrogate=config.surrogate, alpha=config.surrogate_alpha,
              learn_v_th=config.lif_v_th_learnable)
    if kind == "plif":
        return PLIF(init_tau=config.lif_tau, **kw)
    return LIF(tau=config.lif_tau, **kw)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """``nn.LayerNorm`` (``"layernorm"``; Ba et al. 2016) or ``nn.RMSNorm`` (``"rmsnorm"``; Zhang &
    Sennrich 2019) over the last axis of size ``dim``: ``[..., dim] -> [..., dim]``, same dtype.

    Raises ValueError for another ``kind``.
    """
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; accepted: layernorm, rmsnorm")


def apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x [B, L, ...] * mask [B, L]`` (any dtype, cast to ``x.dtype``) broadcast over the trailing
    axes: padded positions become 0. Returns ``x`` itself when mask is None."""
    if mask is None:
        return x
    return x * mask.view(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)


def fire_tokens(lif: LIF, x: torch.Tensor, v: torch.Tensor | None, mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``lif`` along the token axis: ``x [B, L, N]``, ``v [B, N]`` or None (at rest),
    ``mask [B, L]`` or None -> ``(spikes [B, L, N] in x.dtype, v [B, N] float32)``.

    Tokens are the neuron's time steps (SpikeGPT, Zhu et al. 2023). Padded positions get zero
    input, so a neuron at rest stays at rest there (left padding leaves no trace).
    """
    x = apply_mask(x, mask)
    spikes, v_new = lif(x.transpose(0, 1).contiguous(), v)  # contiguous time steps: faster loop
    return spikes.transpose(0, 1), v_new


class SpikingNorm(nn.Module):
    """LayerNorm, or a BatchNorm whose training statistics come from the real (unpadded) tokens only.

    Spikformer (Zhou et al. 2023) puts BatchNorm after every projection; its batch statistics
    mix tokens across the batch, so here they are taken over ``mask == 1`` positions only and,
    in eval mode, the running statistics make it a per-token affine map (causal, and the
    same in parallel and recurrent execution).

    Args: kind ``"layernorm" | "batchnorm"``, dim ``N``, eps.
    ``forward(x [B, L, N], mask [B, L] | None) -> [B, L, N]`` (same dtype; padded positions are
    0 in training-mode batchnorm).
    Raises:
        ValueError: another ``kind``.
    """

    def __init__(self, kind: str, dim: int, eps: float = 1e-5):
        super().__init__()
        if kind not in ("layernorm", "batchnorm"):
            raise ValueError(f"unknown spiking norm {kind!r}; accepted: layernorm, batchnorm")
        self.kind = kind
        self.norm = nn.LayerNorm(dim, eps=eps) if kind == "layernorm" else nn.BatchNorm1d(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "layernorm":
            return self.norm(x)
        flat = x.reshape(-1, x.shape[-1])
        if not self.training or mask is None:
            return self.norm(flat).reshape(x.shape)
        keep = mask.reshape(-1).bool()
        out = torch.zeros_like(flat)
        out[keep] = self.norm(flat[keep]).to(out.dtype)
        return out.reshape(x.shape)


class SpikingInput(AdaptiveSpike):
    """Adaptive spiking on the input of linear projections (SpikingBrain report, Eqs. 19-23),
    recording the sparsity of the spike counts it emits.

    ``v_th = mean(|x|)/k`` per token, counts ``round(x / v_th)``, output ``counts * v_th``
    (modes ``"off" | "ste" | "expanded"``, see :class:`spikelm.neurons.AdaptiveSpike`).

    ``forward(x [B, L, D], mask [B, L] | None) -> [B, L, D]`` (same dtype). After each call
    with a mode other than ``"off"``, ``self.sparsity`` holds a 0-dim float32 tensor:
    ``1 - (nonzero counts / counts)`` over the real (``mask == 1``) tokens, i.e. the fraction of
    channels that emit no spike (the ``sparsity`` of :mod:`spikelm.eval.spikes`, there over all
    positions). Raises ValueError for an unknown mode or ``k <= 0`` (``AdaptiveSpike``).
    """

    def __init__(self, mode: str = "off", k: float = 3.0, max_count: int | None = None, steps: int = 8,
                 encoding: str = "bitwise"):
        super().__init__(mode=mode, k=k, max_count=max_count, steps=steps, encoding=encoding)
        self.sparsity: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = super().forward(x)
        if self.mode != "off":
            with torch.no_grad():
                nz = (y != 0).float().mean(-1)  # [B, L] nonzero fraction per token
                if mask is not None:
                    m = mask.to(nz.dtype)
                    frac = (nz * m).sum() / m.sum().clamp_min(1)
                else:
                    frac = nz.mean()
                self.sparsity = 1.0 - frac
        return y


def spiking_input(config) -> SpikingInput:
    """The :class:`SpikingInput` of a ``SpikeLMConfig`` (``adaptive_spike_mode``, ``_k``,
    ``_max_count``, ``_steps``, ``_encoding``)."""
    return SpikingInput(config.adaptive_spike_mode, config.adaptive_spike_k, config.adaptive_spike_max_count,
                        config.adaptive_spike_steps, config.adaptive_spike_encoding)
