"""Spiking gated linear attention: the linear-attention layer of SpikingBrain-7B."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.gla import gla
from .common import apply_mask, spiking_input


class SpikingGLA(nn.Module):
    """Gated linear attention with adaptive spiking on its projection inputs (SpikingBrain-7B).

    Formulas (SpikingBrain technical report, Pan et al. 2025, Sec. 3; GLA, Yang et al. 2024,
    as in fla's ``GatedLinearAttention`` with ``feature_map="relu"``), with ``s(.)`` the
    adaptive spiking neuron (``config.adaptive_spike_mode``; identity when ``"off"``)::

        u      = s(x)                                  (x [B, L, D], the normed block input)
        q, k   = relu(W_q u + b_q), relu(W_k u + b_k)  ([B, L, H, K]; "none": no relu)
        v      = W_v u + b_v                           ([B, L, H, V])
        g      = logsigmoid(W_g2 W_g1 u + b_g) / 16    ([B, L, H, K], low rank r = 16)
        S_t    = diag(exp(g_t)) S_{t-1} + k_t^T v_t,   o_t = K^-1/2 q_t S_t   (per head)
        o      = RMSNorm_head(o)  [* silu(W_og u) with gla_output_gate]
        out    = W_o s(o)

    With ``gla_num_key_value_heads = H_kv < H`` (grouped-query, as in the softmax attention a
    converted layer comes from), ``W_k, W_v`` produce ``H_kv`` heads, each repeated for
    ``H / H_kv`` consecutive query heads; the gate stays per query head, so every head keeps its
    own state. With ``attention_qk_norm`` q and k are RMS-normalised per head (Qwen3) before the
    feature map; ``attention_out_bias`` adds a bias to ``W_o``.

    The recurrence runs in ``spikelm.kernels.gla.gla`` (Triton chunked/fused-recurrent on
    CUDA, torch chunked on CPU). Padded positions get ``k = 0`` and ``g = 0`` (no decay), so
    they leave the state untouched (exact).

    Args:
        config: ``SpikeLMConfig`` (``hidden_size``, ``num_attention_heads`` = H, ``head_dim`` =
            K = V, ``attention_bias``, ``gla_*``, ``adaptive_spike_*``, ``layer_norm_eps``).
    State (tuple): ``(S [B, H, K, V] float32,)``.
    """

    state_size = 1

    def __init__(self, config):
        super().__init__()
        D, H, Dh = config.hidden_size, config.num_attention_heads, config.head_dim
        Hk = getattr(config, "gla_num_key_value_heads", None) or H
        self.heads, self.kv_heads, self.key_dim, self.value_dim = H, Hk, Dh, Dh
        self.feature_map = config.gla_feature_map
        self.normalizer = config.gla_gate_logit_normalizer
        bias = config.attention_bias
        self.in_spike = spiking_input(config)
        self.q_proj = nn.Linear(D, H * Dh, bias=bias)
        self.k_proj = nn.Linear(D, Hk * Dh, bias=bias)
        self.v_proj = nn.Linear(D, Hk * Dh, bias=bias)
        qk_norm = getattr(config, "attention_qk_norm", False)
        self.q_norm = nn.RMSNorm(Dh, eps=config.layer_norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(Dh, eps=config.layer_norm_eps) if qk_norm else None
        self.g_proj = nn.Sequential(nn.Linear(D, config.gla_gate_low_rank_dim, bias=False),
                                    nn.Linear(config.gla_gate_low_rank_dim, H * Dh, bias=True))
        self.og_proj = nn.Linear(D, H * Dh, bias=False) if config.gla_output_gate else None
        self.g_norm = nn.RMSNorm(Dh, eps=config.layer_norm_eps)
        self.o_spike = spiking_input(config)
        self.o_proj = nn.Linear(H * Dh, D, bias=getattr(config, "attention_out_bias", False))
        self.spike_rates: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, state: tuple | None = None, mask: torch.Tensor | None = None):
        """``x [B, L, D]``, optional state ``(S,)``, ``mask [B, L]`` -> ``(out [B, L, D], (S,))``."""
        B, L, _ = x.shape
        H, Hk, K, V = self.heads, self.kv_heads, self.key_dim, self.value_dim
        u = self.in_spike(x, mask)
        q = self.q_proj(u).view(B, L, H, K)
        k = self.k_proj(u).view(B, L, Hk, K)
        v = self.v_proj(u).view(B, L, Hk, V)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.feature_map == "relu":
            q, k = F.relu(q), F.relu(k)
        g = F.logsigmoid(self.g_proj(u).float()).view(B, L, H, K) / self.normalizer
        if Hk != H:  # grouped-query: kv head j serves query heads j*H/Hk ... (j+1)*H/Hk - 1
            k, v = k.repeat_interleave(H // Hk, dim=2), v.repeat_interleave(H // Hk, dim=2)
        k, g = apply_mask(k, mask), apply_mask(g, mask)
        o, S = gla(q, k, v, g, K ** -0.5, None if state is None else state[0])  # g stays float32
        o = self.g_norm(o)
        o = o.reshape(B, L, H * V)
        if self.og_proj is not None:
            o = o * F.silu(self.og_proj(u))
        out = self.o_proj(self.o_spike(o, mask))
        self._record()
        return out, (S.float(),)

    def _record(self) -> None:
        for name, mod in (("in", self.in_spike), ("o_in", self.o_spike)):
            if mod.sparsity is not None:
                self.spike_rates[f"{name}.sparsity"] = mod.sparsity

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, kv_heads={self.kv_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
                f"feature_map={self.feature_map}")
