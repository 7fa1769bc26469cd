"""What SpikingBrain's two attention layers (``gla`` and ``swa``) share: adaptive spiking on the
projection inputs, grouped-query q/k/v projections, Qwen3's per-head q/k norms and the output
projection."""
from __future__ import annotations

import torch
from torch import nn

from .base import SpikeLMLayer
from .common import spiking_input


class ProjectedAttention(SpikeLMLayer):
    """Base of :class:`~spikelm.layers.SpikingGLA` and :class:`~spikelm.layers.SlidingWindowAttention`.

    With ``s`` the adaptive spiking neuron (SpikingBrain report, Pan et al. 2025, Eqs. 19-23;
    identity when ``config.adaptive_spike_mode == "off"``) and ``x [B, L, D]`` the normed block
    input: ``u = s(x)``; ``q = W_q u + b_q`` (``H`` heads), ``k, v = W_k u + b_k, W_v u + b_v``
    (``H_kv`` heads; grouped-query, Ainslie et al. 2023), each head of ``Dh`` channels; with
    ``attention_qk_norm``, q and k are RMS-normalised per head (Qwen3's ``q_norm``/``k_norm``);
    the output is ``W_o s(o) (+ b_o with attention_out_bias)``.

    Subclasses build the parts in their own order (the order of the parameters in a
    checkpoint): :meth:`_init_qkv`, :meth:`_init_qk_norm`, :meth:`_init_out`.
    Spike sites: ``"in.sparsity"``, ``"o_in.sparsity"`` (when spiking is on).
    """

    spike_sites = ("in.sparsity", "o_in.sparsity")
    uses_head_dim = True

    def _init_qkv(self, config, heads: int, kv_heads: int, head_dim: int) -> None:
        """``in_spike``, ``q_proj [D -> H Dh]``, ``k_proj``, ``v_proj [D -> H_kv Dh]`` (biases with
        ``config.attention_bias``); sets ``heads``, ``kv_heads``, ``head_dim``."""
        D, bias = config.hidden_size, config.attention_bias
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.in_spike = spiking_input(config)
        self.q_proj = nn.Linear(D, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(D, kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(D, kv_heads * head_dim, bias=bias)

    def _init_qk_norm(self, config) -> None:
        """``q_norm``, ``k_norm``: ``nn.RMSNorm(Dh)`` with ``config.attention_qk_norm``, else None."""
        qk_norm = getattr(config, "attention_qk_norm", False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.layer_norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.layer_norm_eps) if qk_norm else None

    def _init_out(self, config) -> None:
        """``o_spike`` and ``o_proj [H Dh -> D]`` (bias with ``config.attention_out_bias``)."""
        self.o_spike = spiking_input(config)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size,
                                bias=getattr(config, "attention_out_bias", False))

    def _project_qkv(self, x: torch.Tensor, mask: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, L, D]`` -> ``(u [B, L, D], q [B, L, H, Dh], k, v [B, L, H_kv, Dh])``, q and k
        normed when ``attention_qk_norm``; all in x.dtype."""
        B, L, _ = x.shape
        u = self.in_spike(x, mask)
        q = self.q_proj(u).view(B, L, self.heads, self.head_dim)
        k = self.k_proj(u).view(B, L, self.kv_heads, self.head_dim)
        v = self.v_proj(u).view(B, L, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return u, q, k, v

    def _output(self, o: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``W_o s(o)`` for ``o [B, L, H Dh]``; records the two sparsity sites."""
        out = self.o_proj(self.o_spike(o, mask))
        self._record_sparsity(("in", self.in_spike), ("o_in", self.o_spike))
        return out
