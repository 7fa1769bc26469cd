"""Sliding-window softmax attention with RoPE, grouped-query heads and a ring-buffer KV cache."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .base import attention_dims
from .projected_attention import ProjectedAttention


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


class SWAState(NamedTuple):
    """State of :class:`SlidingWindowAttention`: a ring buffer of the last ``W`` keys and values.

    Attributes:
        k_cache, v_cache: ``[B, W, H_kv, Dh]`` in the activation dtype (keys after RoPE); the
            token at position ``p`` lives in slot ``p mod W``.
        pos: ``[B]`` int64, the real (unpadded) tokens seen so far.
    """

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    pos: torch.Tensor


class SlidingWindowAttention(ProjectedAttention):
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
    ``forward(x [B, L, D], state: SWAState | None, mask [B, L] | None) -> (out [B, L, D] in
    x.dtype, SWAState)``. Spike sites: ``"in.sparsity"``, ``"o_in.sparsity"``.
    Raises:
        ValueError: an odd ``head_dim`` (RoPE rotates channel pairs).
    """

    State = SWAState

    def __init__(self, config):
        super().__init__()
        if config.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {config.head_dim}")
        self.window, self.theta = config.sliding_window, config.rope_theta
        self.rope_type = getattr(config, "rope_type", "default")
        self.rope_params = dict(getattr(config, "rope_params", None) or {})
        self._init_qkv(config, config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        self._init_out(config)
        self._init_qk_norm(config)

    @classmethod
    def check_config(cls, config) -> None:
        if config.head_dim % 2:
            raise ValueError(f"swa applies RoPE, which needs an even head_dim, got {config.head_dim}")

    @classmethod
    def flops_per_token(cls, config, context: int) -> float:
        """Softmax attention over ``T_ctx = min(context, window)`` keys: ``12 * H * Dh * T_ctx``
        (PaLM's ``12 * L * H * Q * T`` per layer, Chowdhery et al. 2022, appendix B); a config
        without ``sliding_window`` (a Llama) attends over the whole context."""
        heads, head_dim = attention_dims(config)
        window = getattr(config, "sliding_window", None) or context
        return 12.0 * heads * head_dim * min(context, window)

    def init_state(self, batch: int, device, dtype) -> SWAState:
        """Empty cache: zero ``[B, W, H_kv, Dh]`` keys and values in ``dtype``, ``pos`` zeros ``[B]`` int64."""
        kv = torch.zeros(batch, self.window, self.kv_heads, self.head_dim, device=device, dtype=dtype)
        return SWAState(kv, kv.clone(), torch.zeros(batch, dtype=torch.long, device=device))

    def forward(self, x: torch.Tensor, state: SWAState | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, SWAState]:
        """``x [B, L, D]``, optional state, ``mask [B, L]`` (1 = token, 0 = pad) -> ``(out [B, L, D], new state)``."""
        B, L, _ = x.shape
        H, Hk, Dh, W = self.heads, self.kv_heads, self.head_dim, self.window
        _, q, k, v = self._project_qkv(x, mask)
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
        out = self._output(o.transpose(1, 2).reshape(B, L, H * Dh), mask)
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
        return out, SWAState(k_new, v_new, pos_end)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, window={self.window}"
