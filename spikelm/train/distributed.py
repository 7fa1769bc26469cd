"""Process-group setup around DeepSpeed: single process without a launcher, or any launcher."""
from __future__ import annotations

import os
import socket

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: int = 600) -> tuple[int, int, torch.device]:
    """Initialise ``torch.distributed`` through DeepSpeed; returns ``(rank, world_size, device)``.

    Under a launcher (deepspeed, torchrun, srun torchrun) the usual ``RANK``/``WORLD_SIZE``/
    ``LOCAL_RANK``/``MASTER_*`` variables are read; without one, a one-process group on
    localhost is made. Backend: NCCL on CUDA, gloo on CPU. A collective that waits more than
    ``timeout_s`` seconds (a dead rank) raises on the surviving ranks instead of hanging.
    """
    from datetime import timedelta

    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False,
                                   timeout=timedelta(seconds=timeout_s))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of floats over all ranks (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks, in place and returned (no host sync: the collective is queued on
    the tensor's device like a kernel). ``t`` itself without a process group of several ranks."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
