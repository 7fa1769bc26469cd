"""Expert parallelism for the ``moe`` MLPs, on DeepSpeed's MoE machinery.

With ``train.expert_parallel_size: P`` the ``E`` routed experts of every MoE layer are spread
over each group of ``P`` consecutive ranks (``E / P`` per rank; DeepSpeed's expert-parallel
groups, ``deepspeed.utils.groups``), and the tokens travel to their experts and back by two
all-to-alls per layer (DeepSpeed's ``sharded_moe._AllToAll``, capacity-padded to the largest
expert group of the step so that nothing is dropped). The router, the shared experts and the
rest of the model stay data-parallel.

DeepSpeed's engine handles such a layer as one of its own MoE layers: :func:`shard_experts`
turns each :class:`~spikelm.layers.moe.SpikingMoE` into an :class:`ExpertParallelMoE`, a
subclass of DeepSpeed's ``deepspeed.moe.layer.MoE``, with the local experts under
DeepSpeed's parameter path (``deepspeed_moe.experts.deepspeed_experts.{j}``) and marked as
expert parameters (``allreduce=False``, ``group_name``). So the engine averages their gradients
over the expert-data-parallel group, ZeRO 1/2 partitions their optimizer state there (with the
``moe`` parameter groups of ``deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer``),
and ``save_checkpoint`` / ``load_checkpoint`` write and read one file per expert
(``layer_{l}_expert_{e}_mp_rank_00_model_states.pt``, global ids). The shared experts are renamed
``shared`` there (DeepSpeed treats every parameter whose name holds "expert" as routed).
:func:`hf_state_dict` maps names back: the Hugging Face export is the plain single-device model
(``experts.{e}``, ``shared_experts.{s}``) that loads without DeepSpeed.

ZeRO-3 is not supported with DeepSpeed's MoE layers (DeepSpeed refuses it), nor LoRA with
expert parallelism (the adapters would have to follow the sharded experts).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..layers.moe import SpikingMoE

DS_EXPERTS = "deepspeed_moe.experts.deepspeed_experts"
"""DeepSpeed's parameter path of the local experts inside an MoE layer (its checkpoints key on it)."""


def ep_group_name(ep_size: int) -> str:
    """DeepSpeed's name of the expert-parallel groups of size ``ep_size`` (``deepspeed.moe.layer.MoE``)."""
    return f"ep_size_{ep_size}"


def moe_layers(model: nn.Module) -> list[tuple[str, SpikingMoE]]:
    """``(name, layer)`` of every MoE MLP of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingMoE)]


def check_expert_parallel(config, ep_size: int, world: int, zero_stage: int, lora_r: int) -> None:
    """Raise ``ValueError`` (one line: what is wrong, what is accepted) when ``train.expert_parallel_size``
    ``ep_size`` cannot run: it must divide the number of ranks ``world`` and every MoE layer's
    ``num_experts``, the model must have MoE layers, ZeRO stage 0-2, no LoRA."""
    if ep_size < 1:
        raise ValueError(f"train.expert_parallel_size must be >= 1, got {ep_size}")
    if ep_size == 1:
        return
    if world % ep_size:
        raise ValueError(f"train.expert_parallel_size ({ep_size}) must divide the number of ranks ({world})")
    if "moe" not in list(getattr(config, "mlp_types", [])):
        raise ValueError(f"train.expert_parallel_size {ep_size} needs MoE layers (model.mlp_types with moe); "
                         "this model has none")
    if config.num_experts % ep_size:
        raise ValueError(f"train.expert_parallel_size ({ep_size}) must divide num_experts ({config.num_experts})")
    if zero_stage == 3:
        raise ValueError("train.expert_parallel_size > 1 needs train.zero_stage 0, 1 or 2 (DeepSpeed's MoE layers "
                         "do not run under ZeRO-3)")
    if lora_r:
        raise ValueError("model.lora is not supported with train.expert_parallel_size > 1 (the experts are "
                         "sharded over ranks); use expert_parallel_size 1 for LoRA on an MoE model")


def _moe_base():
    from deepspeed.moe.layer import MoE

    return MoE


class ExpertParallelMoE(SpikingMoE):
    """A :class:`SpikingMoE` whose routed experts are spread over an expert-parallel group (see
    the module docstring). Built by :func:`shard_experts`; its class also derives from
    DeepSpeed's ``MoE`` (added there, so this module imports without DeepSpeed).

    Attributes: ``ep_size``, ``ep_rank``, ``ep_group``; ``num_local_experts`` experts
    ``expert_offset .. expert_offset + num_local_experts - 1`` live here, as
    ``deepspeed_moe.experts.deepspeed_experts``.
    """

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
        """DeepSpeed's engine calls this on its MoE layers; the groups exist already (:func:`shard_experts`)."""

    def _shared_experts(self) -> nn.ModuleList:
        return self.shared

    def _exchange(self, t: torch.Tensor) -> torch.Tensor:
        from deepspeed.moe.sharded_moe import _AllToAll

        return _AllToAll.apply(self.ep_group, t.contiguous())

    def _expert_rows(self, u, order, flat, counts, k):
        """As :meth:`SpikingMoE._expert_rows`, with the experts on other ranks: the kept
        assignments, sorted by expert, go into an ``[E, C, D]`` buffer (``C`` the largest
        per-expert count on any rank of the group), an all-to-all brings each rank the rows of its
        local experts, they run, and a second all-to-all brings the results back."""
        import torch.distributed as dist

        E, P, El, D = self.num_experts, self.ep_size, self.num_local_experts, u.shape[-1]
        send = counts[:E].contiguous()
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.ep_group)  # recv[p * El + j]: rows of rank p for local j
        cap = send.max().reshape(1)
        dist.all_reduce(cap, op=dist.ReduceOp.MAX, group=self.ep_group)
        host = torch.cat([send, recv, cap]).tolist()  # the one host read of the layer
        recv_h, C = host[E:2 * E], max(int(host[-1]), 1)
        n_kept = sum(host[:E])
        kept_order = order[:n_kept]
        expert_of = flat.index_select(0, kept_order)
        starts = torch.cumsum(send, 0) - send
        slot = torch.arange(n_kept, device=u.device) - starts.index_select(0, expert_of)
        where = expert_of * C + slot  # row of each kept assignment in the [E * C] buffer
        rows = u.index_select(0, kept_order // k)
        buf = rows.new_zeros(E * C, D).index_copy(0, where, rows)
        got = self._exchange(buf.view(E, C, D)).view(P * El * C, D)
        idx, outs, ran = [], [], []
        local = self.deepspeed_moe.experts.deepspeed_experts
        for j in range(El):
            sel = torch.cat([torch.arange(recv_h[p * El + j], device=u.device) + (p * El + j) * C for p in range(P)])
            if sel.numel():
                outs.append(local[j](got.index_select(0, sel)[None])[0][0])
                idx.append(sel)
                ran.append((sel.numel(), local[j]))
        back = got.new_zeros(P * El * C, D)
        if idx:
            back = back.index_copy(0, torch.cat(idx), torch.cat(outs))
        mine = self._exchange(back.view(E, C, D)).view(E * C, D).index_select(0, where)
        return torch.cat([mine, mine.new_zeros(order.numel() - n_kept, D)]), ran


def shard_experts(model: nn.Module, ep_size: int) -> int:
    """Spread the routed experts of every MoE layer of ``model`` (built in full, identically, on
    every rank) over DeepSpeed's expert-parallel groups of ``ep_size`` ranks: keep this rank's
    ``E / ep_size`` experts (in place, as :class:`ExpertParallelMoE`), drop the others. Call it
    before ``deepspeed.initialize``. Returns the number of MoE layers; 0 (nothing done) for
    ``ep_size == 1``."""
    if ep_size == 1:
        return 0
    from deepspeed.utils import groups

    name = ep_group_name(ep_size)
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)
    rank, group = groups._get_expert_parallel_rank(name), groups._get_expert_parallel_group(name)
    cls = type("ExpertParallelMoE", (ExpertParallelMoE, _moe_base()), {"__module__": __name__,
                                                                      "__doc__": ExpertParallelMoE.__doc__})
    layers = moe_layers(model)
    for _, m in layers:
        El = m.num_experts // ep_size
        local = nn.ModuleList(m.experts[rank * El:(rank + 1) * El])
        for p in local.parameters():
            p.allreduce, p.group_name = False, name  # DeepSpeed's marks of an expert parameter
        holder, experts = nn.Module(), nn.Module()
        experts.deepspeed_experts = local
        holder.experts = experts
        shared = m.shared_experts
        del m.experts, m.shared_experts
        m.__class__ = cls
        m.deepspeed_moe, m.shared = holder, shared
        m.ep_size, m.ep_rank, m.ep_group = ep_size, rank, group
        m.num_local_experts, m.expert_offset, m.expert_group_name = El, rank * El, name
        m.enable_expert_tensor_parallelism, m.use_residual = False, False
    return len(layers)


_DS_KEY = re.compile(rf"\.{re.escape(DS_EXPERTS)}\.(\d+)\.")


def hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names of an expert-parallel model (or checkpoint, with global expert ids) in the
    plain model's names: ``.deepspeed_moe.experts.deepspeed_experts.{e}.`` -> ``.experts.{e}.``,
    ``.shared.`` (an MoE layer's shared experts) -> ``.shared_experts.``."""
    out = {}
    for k, v in state.items():
        k = _DS_KEY.sub(lambda m: f".experts.{m.group(1)}.", k)
        k = re.sub(r"\.ffn\.shared\.(\d+)\.", r".ffn.shared_experts.\1.", k)
        out[k] = v
    return out


def gather_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full plain-named state dict of an expert-parallel model, on the first rank of each
    expert-parallel group (None on the others): every expert is broadcast from the rank that
    holds it. Every rank must call it (collective)."""
    import torch.distributed as dist

    layers = [(n, m) for n, m in moe_layers(model) if isinstance(m, ExpertParallelMoE)]
    state = {k: v.detach() for k, v in model.state_dict().items() if DS_EXPERTS not in k}
    first = None
    for name, m in layers:
        ranks = dist.get_process_group_ranks(m.ep_group)
        first = ranks[0]
        local = m.deepspeed_moe.experts.deepspeed_experts
        for e in range(m.num_experts):
            owner, j = divmod(e, m.num_local_experts)
            template = local[0].state_dict()
            for key, t in template.items():
                buf = local[j].state_dict()[key].detach().clone() if owner == m.ep_rank else torch.empty_like(t)
                dist.broadcast(buf, src=ranks[owner], group=m.ep_group)
                state[f"{name}.{DS_EXPERTS}.{e}.{key}"] = buf
    if first is not None and dist.get_rank() != first:
        return None
    return hf_state_dict(state)


def checkpoint_state_dict(folder: Path) -> dict[str, torch.Tensor] | None:
    """The plain-named weights of an expert-parallel checkpoint step folder (DeepSpeed's model
    states without the experts, plus one ``layer_{l}_expert_{e}_mp_rank_00_model_states.pt`` per
    expert), or None when ``folder`` holds no expert files. Loaded weights-only."""
    from .checkpoint import safe_load

    experts = sorted(Path(folder).glob("layer_*_expert_*_mp_rank_00_model_states.pt"))
    if not experts:
        return None
    state = dict(safe_load(Path(folder) / "mp_rank_00_model_states.pt")["module"])
    for p in experts:
        state.update(safe_load(p))
    return hf_state_dict(state)
