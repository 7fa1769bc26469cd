"""Training checkpoints: DeepSpeed's engine checkpoint (any ZeRO stage) plus the run's own
client state (step, RNG), saved as ``checkpoints/step{N}`` with the last K kept."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .distributed import barrier

CHECKPOINTS = "checkpoints"
"""Folder of the run directory holding the DeepSpeed checkpoints."""


def step_tags(ckpt_dir: Path) -> list[Path]:
    """The ``step{N}`` checkpoint folders of ``ckpt_dir``, oldest first."""
    return sorted((p for p in ckpt_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()),
                  key=lambda p: int(p.name[4:]))


def rng_state() -> dict:
    """The RNG state a checkpoint restores (torch's CPU generator)."""
    return {"rng_cpu": torch.get_rng_state()}


def restore_rng(client: dict) -> None:
    """Restore the RNG state saved by :func:`rng_state`."""
    torch.set_rng_state(client["rng_cpu"])


def save_checkpoint(engine, ckpt_dir: Path, step: int, keep: int, rank: int) -> None:
    """Save the engine (weights, optimizer, scheduler) with the step and RNG as
    ``ckpt_dir/step{step}`` on every rank, then (rank 0) delete all but the newest ``keep``."""
    engine.save_checkpoint(str(ckpt_dir), tag=f"step{step}", client_state={"step": step, **rng_state()})
    if rank == 0:
        for old in step_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_checkpoint(engine, ckpt_dir: Path) -> int:
    """Load the newest checkpoint of ``ckpt_dir`` into ``engine``, restore the RNG, and return
    its step.

    Raises:
        ValueError: DeepSpeed found no checkpoint to load.
    """
    _, client = engine.load_checkpoint(str(ckpt_dir))
    if client is None:
        raise ValueError(f"could not load the checkpoint in {ckpt_dir}")
    restore_rng(client)
    return int(client["step"])
