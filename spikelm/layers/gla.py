"""Spiking gated linear attention: the linear-attention layer of SpikingBrain-7B."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.gla import gla
from .base import attention_dims
from .common import apply_mask
from .projected_attention import ProjectedAttention


class GLAState(NamedTuple):
    """State of :class:`SpikingGLA`: ``S [B, H, K, V]`` float32, the per-head linear-attention
    memory ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``."""

    S: torch.Tensor


class SpikingGLA(ProjectedAttention):
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
            K = V, ``attention_bias``, ``attention_out_bias``, ``attention_qk_norm``, ``gla_*``,
            ``adaptive_spike_*``, ``layer_norm_eps``).
    ``forward(x [B, L, D], state: GLAState | None, mask [B, L] | None) -> (out [B, L, D] in
    x.dtype, GLAState)``. Spike sites: ``"in.sparsity"``, ``"o_in.sparsity"``.
    """

    State = GLAState

    def __init__(self, config):
        super().__init__()
        D, H, Dh = config.hidden_size, config.num_attention_heads, config.head_dim
        Hk = getattr(config, "gla_num_key_value_heads", None) or H
        self.key_dim, self.value_dim = Dh, Dh
        self.feature_map = config.gla_feature_map
        self.normalizer = config.gla_gate_logit_normalizer
        self._init_qkv(config, H, Hk, Dh)
        self._init_qk_norm(config)
        self.g_proj = nn.Sequential(nn.Linear(D, config.gla_gate_low_rank_dim, bias=False),
                                    nn.Linear(config.gla_gate_low_rank_dim, H * Dh, bias=True))
        self.og_proj = nn.Linear(D, H * Dh, bias=False) if config.gla_output_gate else None
        self.g_norm = nn.RMSNorm(Dh, eps=config.layer_norm_eps)
        self._init_out(config)

    @classmethod
    def flops_per_token(cls, config, context: int) -> float:
        """The state update ``k^T v`` and the readout ``q S``: ``12 * H * K * V`` (2 FLOPs per
        multiply-add each, x3 for the backward), whatever the context."""
        heads, head_dim = attention_dims(config)
        return 12.0 * heads * head_dim * head_dim

    def forward(self, x: torch.Tensor, state: GLAState | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, GLAState]:
        """``x [B, L, D]``, optional state, ``mask [B, L]`` (1 = token, 0 = pad) -> ``(out [B, L, D], new state)``."""
        B, L, _ = x.shape
        H, Hk, K, V = self.heads, self.kv_heads, self.key_dim, self.value_dim
        u, q, k, v = self._project_qkv(x, mask)
        if self.feature_map == "relu":
            q, k = F.relu(q), F.relu(k)
        g = F.logsigmoid(self.g_proj(u).float()).view(B, L, H, K) / self.normalizer
        if Hk != H:  # grouped-query: kv head j serves query heads j*H/Hk ... (j+1)*H/Hk - 1
            k, v = k.repeat_interleave(H // Hk, dim=2), v.repeat_interleave(H // Hk, dim=2)
        k, g = apply_mask(k, mask), apply_mask(g, mask)
        o, S = gla(q, k, v, g, K ** -0.5, None if state is None else state.S)  # g stays float32
        o = self.g_norm(o)
        o = o.reshape(B, L, H * V)
        if self.og_proj is not None:
            o = o * F.silu(self.og_proj(u))
        return self._output(o, mask), GLAState(S.float())

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, kv_heads={self.kv_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
                f"feature_map={self.feature_map}")
