"""Shared fixtures for the kernel tests.

The Triton kernels run on CPU tensors through Triton's interpreter (the fused modules build
interpreted kernels for CPU tensors themselves, so these tests work in one pytest process
whatever ``TRITON_INTERPRET`` was when triton was first imported). Every uninitialised
allocation the fused modules make goes through their ``_empty`` helper; the autouse fixture
below fills those with NaN (or a sentinel for integer buffers) so that a kernel reading a slot
it never wrote shows up as a NaN / wrong count in the comparison.
"""
from __future__ import annotations

import importlib

import pytest
import torch

FUSED_MODULES = (
    "spikelm.kernels.lif.fused_recurrent",
    "spikelm.kernels.wkv4.fused_recurrent",
    "spikelm.kernels.adaptive_spike.fused",
)


def poisoned_empty(shape, dtype, device):
    """``torch.empty`` that fills floats with NaN and integers with a large sentinel."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(-(2 ** 30) if dtype != torch.uint8 else 255)


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    """Make every fresh allocation in the fused kernel modules NaN-filled for the test."""
    for name in FUSED_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "_empty", poisoned_empty)
    yield


# GPU-only tests are marked ``@pytest.mark.gpu`` and ``skipif(not torch.cuda.is_available())``.
