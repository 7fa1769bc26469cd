"""Sequence parallelism for spiking recurrent and linear-attention models: one sequence split into
``P`` contiguous chunks on ``P`` ranks, the layers' states passed from rank to rank.

Every spikelm layer kind carries its whole past in a fixed-size state (WKV-4's ``(aa, bb, pp)``
and token shift, GLA's ``S``, the LIF membranes ``v``, SSA's running ``sum k^T v``, SWA's ring
buffer of its window's keys and values), and running a sequence in chunks from the state the
previous chunk left equals running it in one call (``docs/architecture.md``, "State
interface"). So chunk ``c`` on rank ``c`` of a sequence-parallel group starts from the final
state of chunk ``c - 1`` (a pipelined scan over ranks, as LASP, Sun et al. 2024, does for
linear attention): forward states flow right, and the gradient of each chunk's initial state
flows left, to be added to the previous chunk's backward through its final state. With one
mechanism for every layout, sliding-window attention gets its window's keys/values from the
left neighbour (its cache) and SSA its running sums; no all-to-all over heads is needed, since
no layer here attends over an unbounded past.

One micro-batch on the rank holding chunk ``c`` (``P`` chunks of ``n = L / P`` tokens):

1. ``c > 0``: receive the initial state from rank ``c - 1`` (leaf tensors with gradients);
2. forward chunk ``c`` from that state; ``loss_c = P * nll_sum(chunk) / N`` (``N`` the targets
   of the whole sequences), so that DeepSpeed's average over all ranks gives the gradient of the
   whole sequences' mean loss;
3. ``c < P - 1``: send the final state to rank ``c + 1``; receive ``g = d total_{c+1} / d state``
   back and add the surrogate ``sum(final_state * g)`` (whose gradient with respect to the final
   state is ``g``) to the loss;
4. ``c > 0``: ``torch.autograd.grad`` of that total with respect to the initial state, sent to
   rank ``c - 1``; then the ordinary backward (``engine.backward``) on every rank.

Step 4's extra backward pass (the state gradient must reach the left neighbour before any rank
starts the gradient collectives of its backward) and the serial forward scan are the cost of
this simple schedule: P ranks hold 1/P of the activations, at roughly the time of one rank.
Exact for every layout with the ``layernorm`` spiking norm (a training-mode ``batchnorm`` takes
its statistics per chunk) and dropout 0. Validation runs each sequence whole on one rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..eval.loss import IGNORE_INDEX, count_targets, token_nll_sum
from ..kernels.dispatch import state_gradients
from ..layers import map_state, state_tensors


class SequenceParallel:
    """A rank's place in the sequence-parallel groups (``P`` consecutive ranks each) and the
    exchange of states within its group.

    Args: ``size`` P (must divide the world size), ``rank``, ``world``. Builds the process groups
    (every rank calls it: ``dist.new_group`` is collective). Attributes: ``chunk`` (this rank's
    chunk index), ``data_rank``, ``data_world`` (the data-parallel place: ranks of one group read
    the same sequences), ``group``, ``prev``/``next`` (global ranks or None).
    Raises ValueError when ``size`` does not divide ``world``.
    """

    def __init__(self, size: int, rank: int, world: int):
        if size < 1 or world % size:
            raise ValueError(f"train.sequence_parallel_size ({size}) must divide the number of ranks ({world})")
        self.size, self.rank, self.world = size, rank, world
        self.chunk, self.data_rank, self.data_world = rank % size, rank // size, world // size
        self.group = None
        for g in range(world // size):  # every rank creates every group (collective)
            ranks = list(range(g * size, (g + 1) * size))
            pg = dist.new_group(ranks) if size > 1 else None
            if rank in ranks:
                self.group = pg
        self.prev = rank - 1 if self.chunk > 0 else None
        self.next = rank + 1 if self.chunk < size - 1 else None
        self._templates: dict = {}

    def bounds(self, length: int) -> tuple[int, int]:
        """``(start, end)`` of this rank's chunk of a length-``length`` sequence. Raises ValueError
        when ``size`` does not divide ``length``."""
        if length % self.size:
            raise ValueError(f"data.block_size ({length}) must be divisible by train.sequence_parallel_size "
                             f"({self.size})")
        n = length // self.size
        return self.chunk * n, (self.chunk + 1) * n

    def _template(self, model, ids: torch.Tensor):
        """The structure, shapes and dtypes of the model's state for a batch like ``ids``: a
        one-token evaluation-mode forward, cached by model and batch size."""
        key = (id(model), ids.shape[0])
        if key not in self._templates:
            was = model.training
            model.eval()
            with torch.no_grad():
                self._templates[key] = model(input_ids=ids[:, :1], use_cache=True).past_key_values
            model.train(was)
        return self._templates[key]

    def _recv(self, like: list[torch.Tensor], src: int) -> list[torch.Tensor]:
        out = []
        for t in like:
            buf = torch.empty_like(t)
            dist.recv(buf, src=src, group=self.group)
            out.append(buf)
        return out

    def _send(self, tensors: list[torch.Tensor], dst: int) -> None:
        for t in tensors:
            dist.send(t.detach().contiguous(), dst=dst, group=self.group)

    def step(self, model, batch: dict, backward) -> torch.Tensor:
        """Forward and backward of this rank's chunk of ``batch`` (text blocks: ``input_ids [B, L]``
        and ``shift_labels [B, L]``, or ``input_ids`` alone, whose next tokens are then the targets) as in the module docstring; ``backward(total)`` runs the backward (e.g.
        ``engine.backward``). Returns the chunk's loss ``P * nll_sum / N`` (0-dim float32,
        detached): averaged over the group's ranks, the whole sequences' mean loss."""
        from ..models.modeling_spikelm import SpikeLMCache

        ids = batch["input_ids"]
        B, L = ids.shape
        s, e = self.bounds(L)
        full = batch.get("shift_labels")  # text blocks: the next token of every position
        if full is None:
            full = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], IGNORE_INDEX)], 1)
        targets, n_targets = full[:, s:e], count_targets(full).clamp(min=1)
        cache, leaves = None, []
        if self.prev is not None:
            template = self._template(model, ids)
            got = self._recv(state_tensors(template.layers), self.prev)
            leaves = [t.requires_grad_() for t in got if t.is_floating_point()]
            it = iter(got)
            cache = SpikeLMCache(map_state(lambda _: next(it), template.layers), s)
        with state_gradients():  # the kernels' paths that differentiate through the states
            out = model(input_ids=ids[:, s:e], past_key_values=cache, use_cache=True)
        loss = token_nll_sum(out.logits, targets)[0].float() * self.size / n_targets
        total = loss
        aux = getattr(out, "aux_loss", None)
        if aux is not None:
            total = total + aux / self.size  # each chunk's routers: the mean over the chunks
        if self.next is not None:
            final = state_tensors(out.past_key_values.layers)
            self._send(final, self.next)
            grads = self._recv([f for f in final if f.is_floating_point()], self.next)
            total = total + sum((f * g).sum() for f, g in zip([f for f in final if f.is_floating_point()], grads)
                                if f.requires_grad)
        if leaves:
            g_init = torch.autograd.grad(total, leaves, retain_graph=True, allow_unused=True)
            self._send([torch.zeros_like(t) if g is None else g for t, g in zip(leaves, g_init)], self.prev)
        backward(total)
        return loss.detach()
