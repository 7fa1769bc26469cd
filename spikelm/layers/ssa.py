"""Causal spiking self-attention: Spikformer's SSA and the spike-driven SDSA, with exact
running-sum recurrent forms."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .base import SpikeLMLayer
from .common import SpikingNorm, apply_mask, fire_tokens, make_neuron

VARIANTS = ("ssa", "sdsa")


class SpikingAttentionState(NamedTuple):
    """State of :class:`SpikingSelfAttention` (all float32, batch first).

    Attributes:
        kv: the running sum over the tokens seen so far: ``S = sum_i k_i^T v_i`` per head
            ``[B, H, Dh, Dh]`` (ssa), or ``sum_i k_i * v_i`` ``[B, D]`` (sdsa).
        v_q, v_k, v_v: membrane potentials ``[B, D]`` of the Q, K, V neurons.
        v_attn: membrane potential ``[B, D]`` of the attention neuron.
    """

    kv: torch.Tensor
    v_q: torch.Tensor
    v_k: torch.Tensor
    v_v: torch.Tensor
    v_attn: torch.Tensor


class SpikingSelfAttention(SpikeLMLayer):
    """Causal spiking self-attention for language models (tokens are the neurons' time steps).

    ``Q, K, V = LIF(Norm(X W_q|k|v))`` (binary spike tensors ``[B, L, D]``, ``H`` heads of
    ``Dh = D / H``), then

    * ``"ssa"`` (Spikformer, Zhou et al. 2023, ICLR, Eq. 6-7): ``LIF_{v_th}(s * Q K^T V)``
      with no softmax, made causal: ``a_t = s * q_t sum_{i<=t} k_i^T v_i`` per head;
    * ``"sdsa"`` (Spike-driven Transformer, Yao et al. 2023, NeurIPS, Eq. 11:
      ``Q (x) SN(SUM_c(K (x) V))``), made causal: ``a_t = q_t * LIF_{v_th}(s * sum_{i<=t} k_i * v_i)``
      (element-wise; the column sum runs over the tokens seen so far),

    and the output is ``Norm(W_o a)``. Without a softmax both are linear attention, so the
    recurrent form keeps a running sum: ``S = sum_i k_i^T v_i`` (``[B, H, Dh, Dh]``) for ssa,
    ``kv = sum_i k_i * v_i`` (``[B, D]``) for sdsa. With binary spikes all sums are small
    integers, exact in float32 (below 2^24), so the parallel form (an ``L x L`` causal
    spike-count matrix) and the recurrent form give bit-identical attention inputs.

    Args:
        config: ``SpikeLMConfig`` (``hidden_size``, ``num_attention_heads``, ``ssa_scale`` =
            ``s`` (0.125), ``ssa_v_th`` (0.5), ``spiking_norm``, ``neuron``, ``lif_*``).
        variant: ``"ssa"`` or ``"sdsa"`` (:class:`SpikeDrivenSelfAttention` is the sdsa one).
    ``forward(x [B, L, D], state: SpikingAttentionState | None, mask [B, L] | None) -> (out
    [B, L, D] in x.dtype, SpikingAttentionState)``.
    Raises:
        ValueError: unknown variant, or ``hidden_size`` not divisible by the heads.
    With ``config.neuron == "none"`` the inner neurons are LIF all the same (these layers are
    defined by their neurons).
    """

    State = SpikingAttentionState
    spike_sites = ("q", "k", "v", "attn")
    variant = "ssa"

    @classmethod
    def from_config(cls, config, layer_id: int) -> "SpikingSelfAttention":
        return cls(config, cls.variant)

    @classmethod
    def check_config(cls, config) -> None:
        D, H = config.hidden_size, config.num_attention_heads
        if D % H:
            raise ValueError(f"ssa/sdsa need hidden_size ({D}) divisible by num_attention_heads ({H})")

    @classmethod
    def flops_per_token(cls, config, context: int) -> float:
        """The parallel form's ``Q K^T`` and ``(Q K^T) V`` products: ``12 * D * T`` (PaLM's
        attention term, Chowdhery et al. 2022, appendix B, with ``H * Dh = D``)."""
        return 12.0 * config.hidden_size * context

    def __init__(self, config, variant: str | None = None):
        super().__init__()
        variant = self.variant if variant is None else variant
        if variant not in VARIANTS:
            raise ValueError(f"unknown spiking attention variant {variant!r}; accepted: {', '.join(VARIANTS)}")
        D, H = config.hidden_size, config.num_attention_heads
        if D % H:
            raise ValueError(f"hidden_size ({D}) must be divisible by num_attention_heads ({H})")
        self.variant, self.heads, self.head_dim, self.scale = variant, H, D // H, config.ssa_scale
        kind = "lif" if config.neuron == "none" else config.neuron
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.o_proj = nn.Linear(D, D, bias=False)
        self.q_norm, self.k_norm, self.v_norm, self.o_norm = (
            SpikingNorm(config.spiking_norm, D, config.layer_norm_eps) for _ in range(4))
        self.q_lif, self.k_lif, self.v_lif = (make_neuron(config, kind) for _ in range(3))
        self.attn_lif = make_neuron(config, kind, v_th=config.ssa_v_th)

    def _spikes(self, proj, norm, lif, x, v, mask, name):
        s, v_new = fire_tokens(lif, norm(proj(x), mask), v, mask)
        s = apply_mask(s, mask)
        self.spike_rates[name] = s.detach().float().mean()
        return s, v_new

    def forward(self, x: torch.Tensor, state: SpikingAttentionState | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, SpikingAttentionState]:
        """``x [B, L, D]``, optional state, ``mask [B, L]`` (1 = token, 0 = pad) ->
        ``(out [B, L, D], new state)``. Pads leave no trace in the state."""
        B, L, D = x.shape
        H, Dh = self.heads, self.head_dim
        st = SpikingAttentionState(None, None, None, None, None) if state is None else state
        q, vq = self._spikes(self.q_proj, self.q_norm, self.q_lif, x, st.v_q, mask, "q")
        k, vk = self._spikes(self.k_proj, self.k_norm, self.k_lif, x, st.v_k, mask, "k")
        v, vv = self._spikes(self.v_proj, self.v_norm, self.v_lif, x, st.v_v, mask, "v")
        qf, kf, vf = q.float(), k.float(), v.float()
        if self.variant == "ssa":
            qh, kh, vh = (t.view(B, L, H, Dh).transpose(1, 2) for t in (qf, kf, vf))  # [B, H, L, Dh]
            causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
            scores = (qh @ kh.transpose(-1, -2)).masked_fill(~causal, 0.0)      # spike counts
            a = scores @ vh                                                      # [B, H, L, Dh]
            S = kh.transpose(-1, -2) @ vh                                        # [B, H, Dh, Dh]
            if st.kv is not None:
                a = a + qh @ st.kv
                S = S + st.kv
            a = (a * self.scale).transpose(1, 2).reshape(B, L, D)
            new_sum = S
        else:
            kv = torch.cumsum(kf * vf, 1)                                        # [B, L, D]
            if st.kv is not None:
                kv = kv + st.kv[:, None]
            new_sum = kv[:, -1]
            gate, va = fire_tokens(self.attn_lif, kv * self.scale, st.v_attn, mask)
            a = qf * gate.float()
        if self.variant == "ssa":
            s, va = fire_tokens(self.attn_lif, a, st.v_attn, mask)
        else:
            s = a
        s = apply_mask(s, mask).to(x.dtype)
        self.spike_rates["attn"] = s.detach().float().mean()
        out = self.o_norm(self.o_proj(s), mask)
        return out, SpikingAttentionState(new_sum, vq, vk, vv, va)

    def extra_repr(self) -> str:
        return f"variant={self.variant}, heads={self.heads}, head_dim={self.head_dim}, scale={self.scale}"


class SpikeDrivenSelfAttention(SpikingSelfAttention):
    """:class:`SpikingSelfAttention` with ``variant="sdsa"`` (Spike-driven Transformer, Yao et
    al. 2023): the registry's ``"sdsa"`` kind. Same parameters, state and spike sites."""

    variant = "sdsa"
