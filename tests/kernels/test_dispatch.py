"""The kernel backend setting (``spikelm.kernels.dispatch``) and the shared helpers of ``triton_utils``.

``"auto"`` is the device rule (Triton on CUDA, and on CPU only under ``TRITON_INTERPRET=1``);
``"triton"`` is the same rule but raises where Triton cannot run; ``"torch"`` the torch paths.
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from spikelm.kernels import dispatch, get_backend, set_backend, triton_utils, use_backend  # noqa: E402
from spikelm.kernels.adaptive_spike import adaptive_spike  # noqa: E402
from spikelm.kernels.adaptive_spike import fused as fz  # noqa: E402
from spikelm.kernels.gla import gla  # noqa: E402
from spikelm.kernels.lif import fused_recurrent as lif_fr  # noqa: E402
from spikelm.kernels.lif import lif_multistep  # noqa: E402
from spikelm.kernels.wkv4 import fused_recurrent as wkv4_fr  # noqa: E402
from spikelm.kernels.wkv4 import wkv4  # noqa: E402


@pytest.fixture(autouse=True)
def restore_backend():
    previous = get_backend()
    yield
    set_backend(previous)


def test_auto_rule_follows_device_and_interpreter(monkeypatch):
    x = torch.zeros(2)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert get_backend() == "auto" and not dispatch.use_triton(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.use_triton(x)
    assert not dispatch.use_triton(x, "torch")  # the keyword wins over the rule
    assert dispatch.use_triton(x, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(dispatch.TritonUnavailableError, match="cannot run a cpu tensor"):
        dispatch.use_triton(x, "triton")  # no silent fallback to torch
    meta = torch.zeros(2, device="meta")
    assert not dispatch.use_triton(meta)
    with pytest.raises(dispatch.TritonUnavailableError, match="cannot run a meta tensor"):
        dispatch.use_triton(meta, "triton")


def test_set_backend_and_use_backend(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(2)
    assert set_backend("torch") == "auto"
    assert get_backend() == "torch" and not dispatch.use_triton(x)
    assert dispatch.use_triton(x, "auto")  # an explicit keyword overrides the setting
    with use_backend("triton") as name:
        assert name == "triton" and get_backend() == "triton"
        assert dispatch.use_triton(x)
    assert get_backend() == "torch"
    with pytest.raises(RuntimeError), use_backend("auto"):
        raise RuntimeError("restored on error too")
    assert get_backend() == "torch"


def test_bad_backend_names_and_missing_triton(monkeypatch):
    with pytest.raises(ValueError, match="accepted: auto, triton, torch"):
        set_backend("cuda")
    with pytest.raises(ValueError, match="accepted: auto, triton, torch"):
        dispatch.use_triton(torch.zeros(1), "fast")
    with pytest.raises(ValueError, match="accepted: auto, triton, torch"):
        lif_multistep(torch.zeros(3, 2), backend="TRITON")
    assert get_backend() == "auto"  # unchanged by the failed call
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(dispatch.TritonUnavailableError, match="triton package"):
        set_backend("triton")
    with pytest.raises(dispatch.TritonUnavailableError):
        wkv4(torch.ones(4), torch.zeros(4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), backend="triton")
    assert get_backend() == "auto"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not dispatch.use_triton(torch.zeros(1))  # auto without Triton: the torch path
    assert issubclass(dispatch.TritonUnavailableError, RuntimeError)


def test_public_ops_follow_the_backend(monkeypatch, spy):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors: Triton can run (interpreted)
    lif_calls = spy(lif_fr, "lif_fused_recurrent")
    wkv_calls = spy(wkv4_fr, "wkv4_fused_recurrent")
    as_calls = spy(fz, "adaptive_spike_fused")
    x = torch.randn(4, 3, 5)
    w, u, k, v = torch.rand(6) + 0.1, torch.randn(6), torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    with use_backend("torch"):
        s_torch, _ = lif_multistep(x)
        y_torch, _ = wkv4(w, u, k, v)
        a_torch = adaptive_spike(x)
    assert not (lif_calls or wkv_calls or as_calls)
    with use_backend("triton"):
        s_tri, _ = lif_multistep(x)
        y_tri, _ = wkv4(w, u, k, v)
        a_tri = adaptive_spike(x)
    assert lif_calls and wkv_calls and as_calls
    assert torch.equal(s_tri, s_torch) and torch.allclose(y_tri, y_torch, rtol=1e-5, atol=1e-6)
    assert torch.allclose(a_tri, a_torch, rtol=1e-6, atol=1e-7)
    n = len(lif_calls)
    lif_multistep(x, backend="torch")  # the keyword overrides the setting ("auto" here)
    assert len(lif_calls) == n
    q = torch.randn(1, 4, 1, 16)
    with pytest.raises(ValueError, match="needs Triton"):
        gla(q, q, q, -torch.rand(1, 4, 1, 16), mode="chunk", backend="torch")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(dispatch.TritonUnavailableError):
        adaptive_spike(x, backend="triton")
    with use_backend("triton"), pytest.raises(dispatch.TritonUnavailableError):
        gla(q, q, q, -torch.rand(1, 4, 1, 16))


def test_triton_utils_helpers():
    triton_utils.check_power_of_two("block", None)
    triton_utils.check_power_of_two("block", 64)
    for bad in (8, 24, 0):
        with pytest.raises(ValueError, match="block must be a power of two >= 16"):
            triton_utils.check_power_of_two("block", bad)
    with pytest.raises(ValueError, match=">= 32"):
        triton_utils.check_power_of_two("chunk_size", 16, 32)
    for n in (1, 2, 3, 16, 17, 1000, 4096, 5000):
        assert triton_utils.next_power_of_2(n) == triton.next_power_of_2(n)
    assert [triton_utils.default_block(n) for n in (1, 100, 10_000)] == [16, 128, 4096]
    assert triton_utils.default_block(100, 64) == 64
    k1 = triton_utils.kernel(lif_fr._lif_fwd_kernel, torch.device("cpu"))
    assert triton_utils.kernel(lif_fr._lif_fwd_kernel, torch.device("cpu"), configs=[(64, 1, 8)], key=["N"]) is k1
