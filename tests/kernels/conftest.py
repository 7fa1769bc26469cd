"""Shared fixtures for the kernel tests.

The Triton kernels run on CPU tensors through Triton's interpreter (the fused modules build
interpreted kernels for CPU tensors themselves, so these tests work in one pytest process
whatever ``TRITON_INTERPRET`` was when triton was first imported). Every uninitialised
allocation the Triton modules make goes through ``spikelm.kernels.triton_utils.empty``; the
autouse fixture below fills those with NaN (or a sentinel for integer buffers) so that a
kernel reading a slot it never wrote shows up as a NaN / wrong count in the comparison.
"""
from __future__ import annotations

import pytest
import torch

from spikelm.kernels import triton_utils


def poisoned_empty(shape, dtype, device):
    """``torch.empty`` that fills floats with NaN and integers with a large sentinel."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(-(2 ** 30) if dtype != torch.uint8 else 255)


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    """Make every fresh allocation of the Triton kernel modules NaN-filled for the test."""
    monkeypatch.setattr(triton_utils, "empty", poisoned_empty)
    yield


@pytest.fixture
def spy(monkeypatch):
    """``spy(module, name)``: wrap ``module.name`` so that each call is recorded; returns the
    list of calls (one entry per call), for checking that a public op dispatched to it."""
    def install(module, name: str) -> list:
        calls = []
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
        return calls

    return install


# GPU-only tests are marked ``@pytest.mark.gpu`` and ``skipif(not torch.cuda.is_available())``.
