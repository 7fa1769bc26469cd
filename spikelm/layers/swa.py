"""Sliding-window softmax attention with RoPE, grouped-query heads and a ring-buffer KV cache."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import spiking_input


def rope_inv_freq(dim: int, theta: float = 10000.0, rope_type: str = "default", params: dict | None = None,
                  device=None) -> torch.Tensor:
    """RoPE inverse frequencies ``[dim/2]`` float32, computed as transformers does.

    ``rope_type``: ``"default"`` ``theta^(-2i/dim)`` (Su et al. 2021); ``"linear"`` the same
    divided by ``params["factor"]`` (position interpolation, Chen et al. 2023); ``"llama3"``
    Llama-3.1's scaling (frequencies with wavelength above ``original_max_position_embeddings /
    low_freq_factor`` divided by ``factor``, those below ``.../high_freq_factor`` kept, a smooth
    interpolation between). Raises ValueError for another ``rope_type``.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    params = params or {}
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / params["factor"]
    if rope_type == "llama3":
        factor, lo, hi = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) * ~(wavelen > old / lo)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unknown rope_type {rope_type!r}; accepted: default, linear, llama3")


def rope_cos_sin(pos: torch.Tensor, dim: int, theta: float = 10000.0,
                 inv_freq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding tables (Su et al. 2021, RoFormer; the Llama "rotate half" layout).

    Args: ``pos [B, L]`` integer positions, ``dim`` the (even) head dim, ``theta`` the base,
    ``inv_freq [dim/2]`` precomputed frequencies (:func:`rope_inv_freq`; overrides ``theta``).
    Returns: ``(cos, sin)``, each ``[B, L, 1, dim]`` float32.
    """
    if inv_freq is None:
        inv_freq = rope_inv_freq(dim, theta, device=pos.device)
    inv_freq = inv_freq.to(pos.device)
    freqs = pos.float()[..., None] * inv_freq                      # [B, L, dim/2]
    emb = torch.cat([freqs, freqs], -1)[:, :, None, :]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, L, H, dim]`` by the tables of :func:`rope_cos_sin` (math in float32, result in x.dtype)."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], -1)
    return (xf * cos + rot * sin).to(x.dtype)


class SlidingWindowAttention(nn.Module):
    """Causal softmax attention over the last ``W`` tokens, with RoPE and grouped-query heads.

    ``q, k, v = W_q s(x), W_k s(x), W_v s(x)`` (``s`` = adaptive spiking, identity when off;
    optional q/k/v biases), RoPE on q and k at each token's position, then
    ``softmax(q k^T / sqrt(Dh) + mask) v`` (with ``attention_qk_norm``, q and k are RMS-normalised
    per head before RoPE, as Qwen3) with ``torch.nn.functional.scaled_dot_product_attention``
    (``enable_gqa``: ``H`` query heads share ``H_kv`` key/value heads, Ainslie et al. 2023) and
    ``out = W_o s(o)``. A query at position ``p`` sees the keys at positions
    ``p - W < p' <= p`` (Mistral-style sliding window; SpikingBrain-7B's odd layers, W = 4096).

    Positions count real tokens only: with ``mask [B, L]`` (1 = token, 0 = left padding) a
    token's position is the number of real tokens before it, so a left-padded row gets exactly
    the positions (and output) of its prompt alone. Pads attend only to themselves (no
    all-masked rows, no NaN) and are never written to the cache.

    Decoding uses a ring buffer of ``W`` slots per layer: the token at position ``p`` lives in
    slot ``p mod W``; each call attends over the cached slots plus the new tokens and then
    writes the newest ``min(W, new real tokens)`` into their slots, so the cache never grows.

    Args:
        config: ``SpikeLMConfig`` (``hidden_size``, ``num_attention_heads``,
            ``num_key_value_heads``, ``head_dim`` (even), ``sliding_window``, ``rope_theta``,
            ``rope_type``/``rope_params``, ``attention_bias``, ``attention_out_bias``,
            ``attention_qk_norm``, ``layer_norm_eps``, ``adaptive_spike_*``).
    State (tuple): ``(k_cache [B, W, H_kv, Dh], v_cache [B, W, H_kv, Dh]`` in the activation
    dtype (keys stored after RoPE), ``pos [B]`` int64 = real tokens seen so far).
    """

    state_size = 3

    def __init__(self, config):
        super().__init__()
        D = config.hidden_size
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        self.window, self.theta = config.sliding_window, config.rope_theta
        self.rope_type = getattr(config, "rope_type", "default")
        self.rope_params = dict(getattr(config, "rope_params", None) or {})
        bias = config.attention_bias
        self.in_spike = spiking_input(config)
        self.q_proj = nn.Linear(D, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(D, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(D, self.kv_heads * self.head_dim, bias=bias)
        self.o_spike = spiking_input(config)
        self.o_proj = nn.Linear(self.heads * self.head_dim, D, bias=getattr(config, "attention_out_bias", False))
        qk_norm = getattr(config, "attention_qk_norm", False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.layer_norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.layer_norm_eps) if qk_norm else None
        self.spike_rates: dict[str, torch.Tensor] = {}

    def init_state(self, batch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Empty cache: zero ``[B, W, H_kv, Dh]`` keys and values, ``pos`` zeros ``[B]`` int64."""
        kv = torch.zeros(batch, self.window, self.kv_heads, self.head_dim, device=device, dtype=dtype)
        return kv, kv.clone(), torch.zeros(batch, dtype=torch.long, device=device)

    def forward(self, x: torch.Tensor, state: tuple | None = None, mask: torch.Tensor | None = None):
        """``x [B, L, D]``, optional state, ``mask [B, L]`` -> ``(out [B, L, D], new state)``."""
        B, L, _ = x.shape
        H, Hk, Dh, W = self.heads, self.kv_heads, self.head_dim, self.window
        u = self.in_spike(x, mask)
        q = self.q_proj(u).view(B, L, H, Dh)
        k = self.k_proj(u).view(B, L, Hk, Dh)
        v = self.v_proj(u).view(B, L, Hk, Dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        real = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        fresh = state is None  # nothing cached: attend over this call's tokens only
        if state is None:
            state = self.init_state(B, x.device, k.dtype)
        k_cache, v_cache, pos0 = state
        rank = real.long().cumsum(1) - 1                                   # rank among this call's real tokens
        pos = pos0[:, None] + rank.clamp_min(0)                            # [B, L]
        cos, sin = rope_cos_sin(pos, Dh, inv_freq=rope_inv_freq(Dh, self.theta, self.rope_type, self.rope_params,
                                                                x.device))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # keys: the cached slots (positions derived from pos0) followed by the new tokens
        slot = torch.arange(W, device=x.device)
        slot_pos = pos0[:, None] - 1 - torch.remainder(pos0[:, None] - 1 - slot, W)   # [B, W]
        idx = torch.arange(L, device=x.device)
        q_pos = pos[:, :, None]
        if fresh and mask is None and L <= W:
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=H != Hk)
        else:
            see_new = real[:, None, :] & (idx[None, :, None] >= idx[None, None, :]) & (pos[:, None, :] > q_pos - W)
            see_new = see_new | torch.eye(L, dtype=torch.bool, device=x.device)[None]       # pads see themselves
            if fresh:
                keys, vals, allowed = k, v, see_new
            else:
                see_old = (slot_pos[:, None, :] >= 0) & (slot_pos[:, None, :] > q_pos - W)
                keys, vals = torch.cat([k_cache.to(k.dtype), k], 1), torch.cat([v_cache.to(v.dtype), v], 1)
                allowed = torch.cat([see_old, see_new], 2)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), vals.transpose(1, 2),
                                               attn_mask=allowed[:, None], enable_gqa=H != Hk)
        out = self.o_proj(self.o_spike(o.transpose(1, 2).reshape(B, L, H * Dh), mask))
        # ring-buffer write: slot j keeps the newest real position p < pos_end with p = j (mod W)
        n_real = real.long().sum(1)
        pos_end = pos0 + n_real
        new_pos = pos_end[:, None] - 1 - torch.remainder(pos_end[:, None] - 1 - slot, W)  # [B, W]
        from_new = new_pos >= pos0[:, None]
        by_rank = torch.full((B, L + 1), L - 1, dtype=torch.long, device=x.device)        # chunk index by rank
        by_rank.scatter_(1, torch.where(real, rank, L), idx.expand(B, L).contiguous())  # (slot L: pads)
        src = by_rank.gather(1, (new_pos - pos0[:, None]).clamp(0, L - 1))                # [B, W]
        gidx = src[:, :, None, None].expand(B, W, Hk, Dh)
        k_new = torch.where(from_new[:, :, None, None], k.gather(1, gidx), k_cache.to(k.dtype))
        v_new = torch.where(from_new[:, :, None, None], v.gather(1, gidx), v_cache.to(v.dtype))
        for name, mod in (("in", self.in_spike), ("o_in", self.o_spike)):
            if mod.sparsity is not None:
                self.spike_rates[f"{name}.sparsity"] = mod.sparsity
        return out, (k_new, v_new, pos_end)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, window={self.window}"
