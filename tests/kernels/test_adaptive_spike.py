"""Triton adaptive spiking and spike counter (``kernels/adaptive_spike/fused.py``) vs ``naive.py``.

CPU tests run the Triton kernels through the interpreter. The kernel sums ``|x|`` in a
different order than torch, so ``v_th`` may differ in the last bit; an integer count may then
differ by one only where ``x / v_th`` lies within 1e-4 of a rounding tie. Bounds are stated
at each comparison.
"""
from __future__ import annotations

import pytest
import torch

from spikelm.kernels import triton_utils
from spikelm.kernels.adaptive_spike import (adaptive_spike, adaptive_threshold, collapse_train, count_nonzero_spikes,
                                            expand_counts, spike_counts)
from spikelm.kernels.adaptive_spike import fused as fz
from spikelm.kernels.adaptive_spike.fused import adaptive_spike_fused, spike_count_fused, spike_counts_fused
from spikelm.kernels.adaptive_spike.naive import adaptive_spike_naive
from spikelm.kernels.adaptive_spike.naive import spike_counts as naive_spike_counts

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def check(x, k=3.0, max_count=None, block_size=None):
    out = adaptive_spike_fused(x, k, max_count, block_size=block_size)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    v_th = adaptive_threshold(x, k)  # reference threshold, fp32, [..., 1]
    y = x.float() / v_th
    n_ref = spike_counts(x, k, max_count)[0].float()
    n_out = torch.round(out.float() / v_th)
    near_tie = ((y - y.floor()) - 0.5).abs() < 1e-4
    assert ((n_out == n_ref) | near_tie).all(), "integer spike counts differ away from a rounding tie"
    assert ((n_out - n_ref).abs() <= 1).all()
    ref = adaptive_spike_naive(x, k, max_count)
    same = n_out == n_ref
    # equal counts: values agree to the output dtype's rounding (fp32: 2 ulp of v_th, fp16: 2^-11)
    tol = 1e-6 if x.dtype == torch.float32 else 1e-3
    err = (out.float() - ref.float()).abs()[same]
    assert (err <= tol * ref.float().abs()[same] + 1e-7).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,block", [((3, 5, 37), None), ((4, 1), None), ((2, 300), 64), ((7, 100), 16),
                                         ((1000,), None)])
@pytest.mark.parametrize("max_count", [None, 2])
def test_matches_naive(dtype, shape, block, max_count):
    g = torch.Generator().manual_seed(len(shape) * 1000 + shape[-1])
    x = (torch.randn(*shape, generator=g) * 2).to(dtype)
    check(x, 3.0, max_count, block)


def test_k_and_heavy_tails():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 129, generator=g) ** 3  # heavy-tailed rows: large counts
    for k in (1.0, 3.0, 10.0):
        check(x, k, None, 32)
    check(torch.zeros(3, 40), 3.0)  # all-zero rows: v_th = eps, output 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,block,max_count", [((3, 5, 37), None, None), ((2, 300), 64, 4)])
def test_counts_and_threshold_match_quantised_output(dtype, shape, block, max_count):
    """spike_counts_fused shares the kernel: counts * v_th equals adaptive_spike_fused bit for bit."""
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(shape[-1])) * 2).to(dtype)
    n, v_th = spike_counts_fused(x, 3.0, max_count, block_size=block)
    assert n.dtype == torch.int32 and n.shape == x.shape
    assert v_th.dtype == torch.float32 and v_th.shape == (*x.shape[:-1], 1)
    out = adaptive_spike_fused(x, 3.0, max_count, block_size=block)
    assert torch.equal((n.float() * v_th).to(dtype), out)
    n_ref, v_ref = spike_counts(x, 3.0, max_count)
    assert torch.allclose(v_th, v_ref, rtol=1e-6, atol=0)  # summation order of mean|x| only
    y = x.float() / v_ref
    near_tie = ((y - y.floor()) - 0.5).abs() < 1e-4
    assert ((n == n_ref) | near_tie).all()
    # and the spike-train expansion of the fused counts round-trips
    train = expand_counts(n, 8 if max_count is None else 4, "bitwise") if n.abs().max() < 256 else None
    if train is not None:
        assert torch.equal(collapse_train(train, "bitwise"), n)


def test_round_half_to_even_like_torch():
    # sum|x| = 18, D = 6, k = 3 -> v_th = 1 exactly; the counts hit exact ties
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5, 10.5]])
    out = adaptive_spike_fused(x, 3.0)
    assert torch.equal(out, torch.tensor([[0.0, 2.0, 2.0, -0.0, -2.0, 10.0]]))
    assert torch.equal(out, adaptive_spike_naive(x, 3.0))


def test_straight_through_backward():
    x = torch.randn(4, 33, requires_grad=True)
    g = torch.randn(4, 33)
    (gx,) = torch.autograd.grad((adaptive_spike_fused(x, 3.0, 3) * g).sum(), x)
    assert torch.equal(gx, g)  # identity, exactly


def test_noncontiguous_input():
    x = torch.randn(37, 6).t()  # [6, 37] non-contiguous
    out = adaptive_spike_fused(x, 3.0)
    assert torch.equal(out, adaptive_spike_fused(x.contiguous(), 3.0))
    check(x)


def test_public_dispatch_and_nan_poisoning(monkeypatch, spy):
    assert torch.isnan(triton_utils.empty((2,), torch.float32, "cpu")).all()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = spy(fz, "adaptive_spike_fused")
    x = torch.randn(2, 3, 50)
    out = adaptive_spike(x, 3.0, 4)
    assert calls, "public adaptive_spike did not dispatch to the fused kernel"
    check(x, 3.0, 4)
    assert torch.allclose(out, adaptive_spike_naive(x, 3.0, 4), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8, torch.bool])
@pytest.mark.parametrize("n,block", [(1, 16), (1000, 64), (4097, 4096)])
def test_spike_counter(dtype, n, block):
    g = torch.Generator().manual_seed(n)
    x = (torch.randint(-1, 2, (n,), generator=g)).to(dtype)
    assert spike_count_fused(x, block_size=block).item() == count_nonzero_spikes(x).item()
    assert spike_count_fused(x.reshape(1, -1, 1)).dtype == torch.int64


def test_spike_counter_empty_and_bad_block():
    assert spike_count_fused(torch.zeros(0)).item() == 0
    with pytest.raises(ValueError):
        spike_count_fused(torch.zeros(4), block_size=20)
    with pytest.raises(TypeError):
        spike_count_fused([1, 0, 1])


@pytest.mark.parametrize("encoding", ["binary", "ternary", "bitwise"])
def test_expand_collapse_roundtrip(encoding):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 64, generator=g) * 2
    if encoding == "binary":
        x = x.abs()
    counts, v_th = spike_counts(x, 3.0, max_count=7)
    steps = 3 if encoding == "bitwise" else 7
    train = expand_counts(counts, steps, encoding)
    assert train.shape == (steps, 4, 64) and train.dtype == torch.int8
    assert set(train.unique().tolist()) <= ({0, 1} if encoding == "binary" else {-1, 0, 1})
    assert torch.equal(collapse_train(train, encoding), counts)
    # the fused counter gives the number of nonzero spikes of the train
    assert spike_count_fused(train).item() == int((train != 0).sum())
    with pytest.raises(ValueError):
        expand_counts(counts, 2 if encoding == "bitwise" else 6, encoding)  # does not fit


def test_gradcheck_threshold_float64():
    # the reference's only smooth part: v_th = mean|x| / k (the rounding is straight-through)
    x = (torch.randn(3, 7, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: (x.abs().mean(-1, keepdim=True) / 3.0), (x,))
    assert torch.allclose(adaptive_threshold(x.detach(), 3.0).double(),
                          x.detach().abs().mean(-1, keepdim=True) / 3.0, rtol=1e-6)


@pytest.mark.parametrize("fn", [adaptive_spike, adaptive_spike_fused, spike_counts_fused],
                         ids=["public", "fused", "fused-counts"])
def test_bad_inputs(fn):
    with pytest.raises(TypeError):
        fn(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError):
        fn(torch.randn(3, 4), k=0.0)
    with pytest.raises(ValueError):
        fn(torch.randn(3, 4), k=-1.0)
    with pytest.raises(ValueError):
        fn(torch.randn(3, 4), max_count=0)
    with pytest.raises(ValueError):
        fn(torch.randn(3, 0))
    with pytest.raises(ValueError):
        fn(torch.tensor(1.0))


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(12, 1024, 768), (3, 5000)])
def test_gpu_matches_naive(dtype, shape):
    torch.manual_seed(0)
    x = (torch.randn(*shape, device="cuda") * 2).to(dtype)
    out = adaptive_spike_fused(x, 3.0, 15)
    ref = adaptive_spike_naive(x, 3.0, 15)
    # The GPU sums mean|x| in another order than torch: v_th may differ in its last bits, which
    # changes out = n * v_th by as much in every element of that row, and flips a count only at
    # an exact rounding tie. So: counts equal (up to ties), v_th and out within fp32 rounding.
    n, vth = spike_counts_fused(x, 3.0, 15)
    n_ref, vth_ref = naive_spike_counts(x, 3.0, 15)
    assert (n != n_ref).float().mean().item() < 1e-4
    torch.testing.assert_close(vth.float(), vth_ref.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close((n.float() * vth).to(dtype), out, rtol=0, atol=0)
    eps = torch.finfo(dtype).eps
    close = ((out.float() - ref.float()).abs() <= max(2 * eps, 1e-6) * ref.float().abs()).float().mean().item()
    assert close > 1 - 1e-4, f"only {close:.6f} of the outputs within 2 ulp of the reference"
    s = (torch.rand(10_000_019, device="cuda") < 0.1).to(dtype)
    assert spike_count_fused(s).item() == torch.count_nonzero(s).item()
