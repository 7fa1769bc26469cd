"""Learning-rate schedule and the data order, both pure functions of the step."""
from __future__ import annotations

import math

import numpy as np


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float, schedule: str = "cosine",
              decay_fraction: float = 0.2) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based), in ``[min_lr_ratio, 1]``.

    Linear warmup over ``warmup_steps``, then

    * ``cosine``: cosine decay to ``min_lr_ratio`` at ``max_steps`` (Loshchilov & Hutter 2017,
      as in nanoGPT);
    * ``wsd`` (warmup-stable-decay; Hu et al. 2024, MiniCPM): the peak LR until the last
      ``ceil(decay_fraction * max_steps)`` steps, then a linear decay reaching
      ``min_lr_ratio`` at ``max_steps``. For continual pretraining (SpikingBrain: short
      warmup, constant, then decay) the stable phase can be extended by resuming before
      the decay starts.

    Raises:
        ValueError: unknown ``schedule``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = min(max_steps - warmup_steps, math.ceil(decay_fraction * max_steps))
        start = max_steps - decay_steps
        if step < start or decay_steps <= 0:
            return 1.0
        progress = min(1.0, (step - start + 1) / decay_steps)
        return 1.0 - (1 - min_lr_ratio) * progress
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; accepted: cosine, wsd")


class BatchOrder:
    """Which blocks form each global batch: a fresh seeded permutation per epoch.

    The order depends only on ``(num_blocks, global_batch, seed)``, never on the number of
    ranks, so a run gives the same samples on 1 or 64 processes, and a resumed run continues
    with exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, num_blocks: int, global_batch: int, seed: int):
        if num_blocks < 1:
            raise ValueError("the training split holds no complete block")
        self.num_blocks, self.global_batch, self.seed = num_blocks, global_batch, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)}
        return self._perms[epoch]

    def global_indices(self, step: int) -> list[int]:
        """Block indices of optimizer step ``step`` (length ``global_batch``; wraps across epochs)."""
        out = []
        pos = step * self.global_batch
        while len(out) < self.global_batch:
            epoch, off = divmod(pos, self.num_blocks)
            take = min(self.global_batch - len(out), self.num_blocks - off)
            out.extend(self._perm(epoch)[off:off + take].tolist())
            pos += take
        return out

    def rank_micro_batches(self, step: int, rank: int, world_size: int, micro_batch: int) -> list[list[int]]:
        """The micro-batches (lists of block indices) that ``rank`` processes at ``step``.

        The global batch is cut into ``world_size * grad_accum`` micro-batches; rank ``r``
        takes every micro-batch whose position modulo ``world_size`` is ``r``.
        """
        idx = self.global_indices(step)
        micro = [idx[i:i + micro_batch] for i in range(0, len(idx), micro_batch)]
        return micro[rank::world_size]

    def epoch_of(self, step: int) -> float:
        """Epochs completed at the start of ``step`` (fractional)."""
        return step * self.global_batch / self.num_blocks
