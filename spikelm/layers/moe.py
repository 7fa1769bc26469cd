"""Mixture-of-experts MLP with adaptive spiking experts (SpikingBrain-76B style).

SpikingBrain-76B (Pan et al. 2025, "SpikingBrain Technical Report", arXiv 2509.05276) is a
hybrid-linear MoE LLM upcycled from a dense Qwen2.5-7B: sparse MoE MLPs whose experts take
adaptively spiked inputs, so that sparsity comes from spikes (micro) and from routing (macro).
This module is that MLP kind (``mlp_types: moe``): token-choice top-k routing over ``E`` routed
experts (Shazeer et al. 2017; GShard, Lepikhin et al. 2021; Switch, Fedus et al. 2022; Mixtral,
Jiang et al. 2024), ``S`` always-on shared experts (DeepSeekMoE, Dai et al. 2024; Qwen2-MoE's
sigmoid-gated shared expert), each expert a :class:`~spikelm.layers.mlp.SwiGLU` with the
adaptive spiking neuron on its projection inputs.

Routing (per token ``t``, router logits ``z_t = W_r x_t`` in float32):

* scores ``p_t = softmax(z_t)`` (Mixtral, Qwen2-MoE) or ``sigmoid(z_t)`` (DeepSeek-V3);
* the top-k experts ``e_1..e_k`` and weights ``w_i = p_t[e_i]``, renormalised to sum 1 when
  ``norm_topk_prob`` (Mixtral always, Qwen2-MoE optionally);
* ``y_t = sum_i w_i Expert_{e_i}(x_t) + sum_s Shared_s(x_t)`` (the shared sum times
  ``sigmoid(W_sg x_t)`` with ``shared_expert_gate``, Qwen2-MoE).

Auxiliary losses (added to the causal-LM loss by ``SpikeLMForCausalLM`` when labels are given):

* load balancing, Switch/GShard form: ``E * sum_e f_e P_e`` with ``f_e`` the fraction of the
  top-k assignments that go to expert ``e`` and ``P_e`` the mean router probability of ``e``
  (for sigmoid scores, the scores normalised over the experts); 1.0 when perfectly balanced;
* router z-loss (ST-MoE, Zoph et al. 2022): ``mean_t logsumexp(z_t)^2``.

Both are taken over real tokens (``mask == 1``). Token order is deterministic: assignments are
sorted by expert with a stable sort and combined without atomics. With
``moe_capacity_factor > 0`` each expert takes at most ``ceil(factor * T * k / E)`` assignments
of a training micro-batch (GShard priority: every token's first choice before any second
choice, then token order); the rest are dropped (that term contributes 0; the residual carries
the token) and counted. In evaluation and generation routing is always dropless, so cached,
chunked and one-shot decoding agree.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import SpikeLMLayer
from .mlp import SwiGLU

ROUTER_SCORE_FUNCS = ("softmax", "sigmoid")


class MoEState(NamedTuple):
    """State of :class:`SpikingMoE`: none (the layer is token-wise); an empty NamedTuple."""


def route(logits: torch.Tensor, top_k: int, score_func: str = "softmax", norm_topk_prob: bool = True
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k routing of router logits ``[T, E]`` (any float dtype; computed in float32).

    Returns ``(weights [T, k] float32, experts [T, k] int64, probs [T, E] float32)``: the
    weights of the chosen experts (renormalised to sum 1 per token when ``norm_topk_prob``),
    their indices in descending score order, and the router probabilities the load-balancing
    loss uses (softmax scores, or sigmoid scores normalised over the experts).
    Raises ValueError for an unknown ``score_func`` or ``top_k`` outside ``1..E``.
    """
    E = logits.shape[-1]
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k must be in 1..{E} (the number of experts), got {top_k}")
    z = logits.float()
    if score_func == "softmax":
        scores = torch.softmax(z, dim=-1)
        probs = scores
    elif score_func == "sigmoid":
        scores = torch.sigmoid(z)
        probs = scores / scores.sum(-1, keepdim=True)
    else:
        raise ValueError(f"unknown router score function {score_func!r}; accepted: {', '.join(ROUTER_SCORE_FUNCS)}")
    weights, experts = torch.topk(scores, top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return weights, experts, probs


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """Switch/GShard load-balancing loss ``E * sum_e f_e P_e`` (Fedus et al. 2022, Eq. 4, with
    ``f_e`` over all top-k assignments as in GShard / Mixtral).

    Args: ``probs [T, E]`` float32 router probabilities, ``experts [T, k]`` int64 chosen experts,
    ``real [T]`` bool (the tokens that count; None = all). Returns a 0-dim float32 tensor
    (1.0 for a uniform router and uniform assignments; E for everything on one expert).
    """
    E = probs.shape[-1]
    onehot = F.one_hot(experts, E).float()  # [T, k, E]
    if real is not None:
        r = real.float()
        n = r.sum().clamp_min(1.0)
        f = (onehot * r[:, None, None]).sum((0, 1)) / (n * experts.shape[1])
        P = (probs * r[:, None]).sum(0) / n
    else:
        f = onehot.mean((0, 1))
        P = probs.mean(0)
    return E * (f * P).sum()


def router_z_loss(logits: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_t logsumexp(z_t)^2`` (Zoph et al. 2022, Eq. 5) of logits
    ``[T, E]`` over the ``real [T]`` tokens; a 0-dim float32 tensor."""
    z2 = torch.logsumexp(logits.float(), dim=-1).square()
    if real is None:
        return z2.mean()
    r = real.float()
    return (z2 * r).sum() / r.sum().clamp_min(1.0)


def capacity_mask(experts: torch.Tensor, num_experts: int, capacity: int, real: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Which assignments ``experts [T, k]`` fit in ``capacity`` slots per expert: ``[T, k]`` bool.

    GShard's priority: all first choices (in token order) before all second choices, and so on;
    assignments of tokens with ``real == False`` take no slot and are not kept."""
    T, k = experts.shape
    onehot = F.one_hot(experts.t().reshape(-1), num_experts)  # [k*T, E], slot-major order
    if real is not None:
        onehot = onehot * real.repeat(k)[:, None].to(onehot.dtype)
    position = (onehot.cumsum(0) * onehot).sum(-1) - 1  # 0-based slot of each assignment in its expert
    keep = (position >= 0) & (position < capacity)
    return keep.view(k, T).t()


class SpikingMoE(SpikeLMLayer):
    """Routed + shared SwiGLU experts with adaptive spiking (see the module docstring).

    Args: config (``hidden_size`` D, ``num_experts`` E, ``num_experts_per_tok`` k,
    ``num_shared_experts`` S, ``moe_intermediate_size`` (routed expert width),
    ``shared_expert_intermediate_size``, ``shared_expert_gate``, ``router_score_func``,
    ``norm_topk_prob``, ``moe_capacity_factor``, ``router_aux_loss_coef``,
    ``router_z_loss_coef``, ``mlp_bias``, ``adaptive_spike_*``).

    Parameters: ``router.weight [E, D]``; ``experts.{e}.{gate,up,down}_proj``;
    ``shared_experts.{s}.{gate,up,down}_proj``; ``shared_gate.weight [1, D]`` (with
    ``shared_expert_gate``).

    ``forward(x [B, L, D], state, mask [B, L] | None) -> (out [B, L, D] in x.dtype, MoEState())``.
    After each call: ``aux_loss`` (0-dim float32, with gradient: ``router_aux_loss_coef * lb +
    router_z_loss_coef * z``) and ``moe_stats``, detached device tensors: ``load_balance`` (lb),
    ``z_loss``, ``dropped`` (fraction of real assignments dropped by the capacity),
    ``expert_load [E]`` (fraction of the kept assignments per expert). Spike sites:
    ``"in.sparsity"``, ``"down_in.sparsity"`` over the expert calls (when spiking is on),
    weighted by their rows.

    The expert rows are read on the host once per call (the split sizes of the grouped expert
    calls), as in every dropless MoE.
    """

    State = MoEState
    spike_sites = ("in.sparsity", "down_in.sparsity")

    def __init__(self, config):
        super().__init__()
        D = config.hidden_size
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.score_func, self.norm_topk_prob = config.router_score_func, config.norm_topk_prob
        self.capacity_factor = config.moe_capacity_factor
        self.aux_coef, self.z_coef = config.router_aux_loss_coef, config.router_z_loss_coef
        self.router = nn.Linear(D, self.num_experts, bias=False)
        inter = config.moe_intermediate_size or config.intermediate_size
        self.experts = nn.ModuleList(SwiGLU(config, inter) for _ in range(self.num_experts))
        shared = config.shared_expert_intermediate_size or inter
        self.shared_experts = nn.ModuleList(SwiGLU(config, shared) for _ in range(config.num_shared_experts))
        self.shared_gate = nn.Linear(D, 1, bias=False) if config.shared_expert_gate else None
        self.aux_loss: torch.Tensor | None = None
        self.moe_stats: dict[str, torch.Tensor] = {}

    @classmethod
    def check_config(cls, config) -> None:
        E, k, S = config.num_experts, config.num_experts_per_tok, config.num_shared_experts
        if E < 1:
            raise ValueError(f"num_experts must be >= 1, got {E}")
        if not 1 <= k <= E:
            raise ValueError(f"num_experts_per_tok (top-k, {k}) must be between 1 and num_experts ({E})")
        if S < 0:
            raise ValueError(f"num_shared_experts must be >= 0, got {S}")
        if config.shared_expert_gate and S == 0:
            raise ValueError("shared_expert_gate needs num_shared_experts >= 1")
        if config.router_score_func not in ROUTER_SCORE_FUNCS:
            raise ValueError(f"unknown router_score_func {config.router_score_func!r}; accepted: "
                             f"{', '.join(ROUTER_SCORE_FUNCS)}")
        if config.moe_capacity_factor < 0:
            raise ValueError(f"moe_capacity_factor must be >= 0 (0 = dropless), got {config.moe_capacity_factor}")
        for name in ("moe_intermediate_size", "shared_expert_intermediate_size"):
            v = getattr(config, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")

    @property
    def active_fraction(self) -> float:
        """Share of the routed experts' weights a token uses (``k / E``): FLOPs and energy count
        only active experts."""
        return self.top_k / self.num_experts

    def _shared_experts(self) -> nn.ModuleList:
        """The shared experts (a subclass may keep them under another name)."""
        return self.shared_experts

    def _run_experts(self, u: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor
                     ) -> tuple[torch.Tensor, list[tuple[int, SwiGLU]]]:
        """``sum_i w_i Expert_{e_i}(u_t)`` for ``u [T, D]``; dropped assignments (``keep`` False) add 0.

        A stable sort groups the assignments by expert (dropped ones last, as expert ``E``);
        :meth:`_expert_rows` computes them in that order; the results go back to their
        assignment slots by a permutation (no atomics) and are summed over the k slots in float32."""
        T, k = experts.shape
        E = self.num_experts
        flat = torch.where(keep, experts, torch.full_like(experts, E)).reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E + 1)
        y_sorted, ran = self._expert_rows(u, order, flat, counts, k)
        y = torch.empty_like(y_sorted).index_copy_(0, order, y_sorted).view(T, k, -1)
        w = (weights * keep).unsqueeze(-1)
        return (y.float() * w).sum(1).to(u.dtype), ran

    def _expert_rows(self, u: torch.Tensor, order: torch.Tensor, flat: torch.Tensor, counts: torch.Tensor, k: int
                     ) -> tuple[torch.Tensor, list[tuple[int, SwiGLU]]]:
        """The expert outputs ``[T * k, D]`` of the assignments in sorted ``order`` (``flat``: each
        assignment's expert, ``E`` for dropped ones, which get zeros; ``counts [E + 1]`` per expert),
        and ``(rows, expert)`` of each expert that ran. Each expert runs once on its rows."""
        E = self.num_experts
        rows = u.index_select(0, order // k)
        outs, ran = [], []
        for e, chunk in enumerate(rows.split(counts.tolist())):  # the one host read of the layer
            if e == E:  # dropped assignments
                outs.append(chunk.new_zeros(chunk.shape))
            elif chunk.shape[0]:
                outs.append(self.experts[e](chunk[None])[0][0])
                ran.append((chunk.shape[0], self.experts[e]))
        return torch.cat(outs), ran

    def forward(self, x: torch.Tensor, state: MoEState | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, MoEState]:
        B, L, D = x.shape
        flat = x.reshape(B * L, D)
        real = None if mask is None else mask.reshape(-1).bool()
        logits = F.linear(flat.float(), self.router.weight.float())
        weights, experts, probs = route(logits, self.top_k, self.score_func, self.norm_topk_prob)
        keep = torch.ones_like(experts, dtype=torch.bool) if real is None else real[:, None].expand_as(experts)
        if self.training and self.capacity_factor > 0:
            capacity = math.ceil(self.capacity_factor * B * L * self.top_k / self.num_experts)
            keep = capacity_mask(experts, self.num_experts, capacity, real)
        out, ran = self._run_experts(flat, experts, weights, keep)
        out = out.view(B, L, D)
        shared_experts = self._shared_experts()
        if len(shared_experts):
            shared = sum(s(x, None, mask)[0] for s in shared_experts)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            out = out + shared
            ran += [(B * L, s) for s in shared_experts]
        lb = load_balancing_loss(probs, experts, real)
        z = router_z_loss(logits, real)
        self.aux_loss = self.aux_coef * lb + self.z_coef * z
        self._record(lb, z, experts, keep, real, ran)
        return out, MoEState()

    def _record(self, lb, z, experts, keep, real, ran) -> None:
        """``moe_stats`` and the spike sites of the last call (detached, on the device)."""
        with torch.no_grad():
            E = self.num_experts
            n_real = experts.numel() if real is None else real.sum() * experts.shape[1]
            kept = F.one_hot(experts, E).mul(keep[..., None]).sum((0, 1)).float()
            self.moe_stats = {"load_balance": lb.detach(), "z_loss": z.detach(),
                              "dropped": 1.0 - kept.sum() / torch.as_tensor(n_real, dtype=torch.float32).clamp_min(1),
                              "expert_load": kept / kept.sum().clamp_min(1.0)}
            for site in self.spike_sites:
                parts = [(n, m.spike_rates[site]) for n, m in ran if site in m.spike_rates]
                if parts:
                    self.spike_rates[site] = sum(n * r for n, r in parts) / sum(n for n, _ in parts)
