"""Triton RWKV-4 WKV (``kernels/wkv4/fused_recurrent.py``) against the reference ``naive.py``.

CPU tests run the Triton kernels through the interpreter. Error measure: relative RMS error
``||a - b|| / ||b||``; the bound is stated at every comparison. fp16 inputs are compared with
the reference evaluated in float32 on the same (fp16-representable) values; both compute in
float32, so only the fp16 rounding of ``y``, ``gk`` and ``gv`` separates them.
"""
from __future__ import annotations

import pytest
import torch

from spikelm.kernels import triton_utils
from spikelm.kernels.wkv4 import wkv4, wkv4_init_state
from spikelm.kernels.wkv4 import fused_recurrent as fr
from spikelm.kernels.wkv4.fused_recurrent import wkv4_fused_recurrent
from spikelm.kernels.wkv4.naive import wkv4_naive
from spikelm.kernels.wkv4.torch_chunk import wkv4_torch_chunk
from spikelm.kernels.wkv4.torch_loop import wkv4_torch_loop

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FP32_BOUND = 1e-5       # y and the state: fp32 kernel vs fp32 reference, same recurrence
FP32_GRAD_BOUND = 1e-4  # gradients: sums of exp-weighted terms, rounding order differs
FP16_OUT_BOUND = 2e-3   # tensors stored in fp16 (2^-11 ~ 4.9e-4 relative per element)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values (uninitialised read or overflow?)"
    if b.norm() == 0:  # an exactly-zero reference gradient must be matched (to rounding noise)
        return a.norm().item()
    return ((a - b).norm() / b.norm()).item()


def make_inputs(B, L, D, dtype, seed=0, kscale=2.0, with_state=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(D, generator=g) * 2 + 0.05
    u = torch.randn(D, generator=g)
    k = (torch.randn(B, L, D, generator=g) * kscale).to(dtype)
    v = torch.randn(B, L, D, generator=g).to(dtype)
    gy = torch.randn(B, L, D, generator=g).to(dtype)
    state = None
    if with_state:  # a state reached by running some earlier tokens
        pre_k = torch.randn(B, 3, D, generator=g) * kscale
        pre_v = torch.randn(B, 3, D, generator=g)
        state = wkv4_naive(w, u, pre_k, pre_v)[1]
    return w, u, k, v, gy, state


def run(fn, w, u, k, v, gy, state):
    """Forward + backward; returns (y, final state, grads of w, u, k, v[, aa, bb, pp])."""
    ins = [w.clone().requires_grad_(), u.clone().requires_grad_(), k.clone().requires_grad_(),
           v.clone().requires_grad_()]
    st = None
    if state is not None:
        st = tuple(s.clone().requires_grad_() for s in state)
        ins += list(st)
    y, out_state = fn(ins[0], ins[1], ins[2], ins[3], st)
    # allow_unused: with L = 1 the decay w does not reach y in the naive graph (gradient 0)
    grads = torch.autograd.grad((y.float() * gy.float()).sum(), ins, allow_unused=True)
    grads = tuple(torch.zeros_like(i) if g is None else g for i, g in zip(ins, grads))
    return y.detach(), tuple(s.detach() for s in out_state), grads


def check(B, L, D, dtype, with_state=True, block_size=16, seed=0, kscale=2.0):
    w, u, k, v, gy, state = make_inputs(B, L, D, dtype, seed, kscale, with_state)
    y, st, g = run(lambda *a: wkv4_fused_recurrent(*a, block_size=block_size), w, u, k, v, gy, state)
    y_r, st_r, g_r = run(wkv4_naive, w, u, k.float(), v.float(), gy, state)
    assert y.dtype == dtype and all(s.dtype == torch.float32 for s in st)
    assert rel(y.float(), y_r) < (FP32_BOUND if dtype == torch.float32 else FP16_OUT_BOUND)
    assert rel(st[0], st_r[0]) < FP32_BOUND and rel(st[1], st_r[1]) < FP32_BOUND
    assert rel(st[2], st_r[2]) < 1e-6  # pp: a running maximum, exact up to one rounding
    names = ["w", "u", "k", "v", "aa", "bb", "pp"]
    for name, a, b in zip(names, g, g_r):
        # gk, gv are stored in the input dtype; gw, gu and the state gradients are fp32
        bound = FP16_OUT_BOUND if (dtype == torch.float16 and name in ("k", "v")) else FP32_GRAD_BOUND
        assert a.dtype == (dtype if name in ("k", "v") else torch.float32), name
        assert rel(a.float(), b) < bound, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_naive(dtype, with_state):
    # L = 9, D = 37 over blocks of 16 (3 programs per row, the last one partial), B = 2
    check(2, 9, 37, dtype, with_state)


@pytest.mark.parametrize("B,L,D,block", [(1, 1, 5, 16), (3, 1, 40, 32), (1, 17, 1, 16), (2, 20, 100, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_odd_shapes(B, L, D, block, dtype):
    check(B, L, D, dtype, with_state=True, block_size=block, seed=B * 100 + L * 10 + D)


@pytest.mark.parametrize("chunk", [1, 3, 8])
@pytest.mark.parametrize("L", [1, 8, 11])
def test_time_chunks(chunk, L, monkeypatch):
    # tokens per chunk (loads issued ahead): L a multiple of it, not a multiple, or shorter
    monkeypatch.setattr(fr, "_CPU_CHUNK", chunk)
    check(2, L, 21, torch.float32, with_state=True, block_size=16, seed=chunk * 100 + L)


def test_large_keys_long_sequence_stable():
    # |k| up to ~60: e^k overflows fp32 without the running maximum; 150 tokens
    check(1, 150, 19, torch.float32, with_state=True, block_size=32, seed=7, kscale=20.0)


def test_default_block_and_public_dispatch(monkeypatch, spy):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = spy(fr, "wkv4_fused_recurrent")
    w, u, k, v, gy, state = make_inputs(2, 7, 33, torch.float32, seed=4)
    y, st, g = run(wkv4, w, u, k, v, gy, state)
    assert calls, "public wkv4 did not dispatch to the fused kernel"
    y_r, st_r, g_r = run(wkv4_naive, w, u, k, v, gy, state)
    assert rel(y, y_r) < FP32_BOUND
    for a, b in zip(g, g_r):
        assert rel(a, b) < FP32_GRAD_BOUND


def test_chunked_calls_equal_one_call():
    """Two calls with the state carried equal one call (outputs and final state, bitwise).

    The fused final state is not differentiable, so gradients are compared per call: the
    second call's gradient into its initial state is checked against naive in ``check``.
    """
    w, u, k, v, _, _ = make_inputs(2, 13, 37, torch.float32, seed=9, with_state=False)
    y, st = wkv4_fused_recurrent(w, u, k, v, block_size=16)
    y1, st1 = wkv4_fused_recurrent(w, u, k[:, :5].contiguous(), v[:, :5].contiguous(), block_size=16)
    y2, st2 = wkv4_fused_recurrent(w, u, k[:, 5:].contiguous(), v[:, 5:].contiguous(), st1, block_size=16)
    assert torch.equal(torch.cat([y1, y2], 1), y)
    for a, b in zip(st2, st):
        assert torch.equal(a, b)


def test_gradients_deterministic_and_nan_poisoning_active():
    assert torch.isnan(triton_utils.empty((3,), torch.float32, "cpu")).all()
    w, u, k, v, gy, state = make_inputs(3, 6, 20, torch.float32, seed=1)
    a = run(lambda *x: wkv4_fused_recurrent(*x, block_size=16), w, u, k, v, gy, state)
    b = run(lambda *x: wkv4_fused_recurrent(*x, block_size=16), w, u, k, v, gy, state)
    for p, q in zip(a[2], b[2]):
        assert torch.equal(p, q)  # gw, gu: per-(b, d) partials summed by torch, no atomics


def test_no_grad_forward_and_noncontiguous_inputs():
    w, u, k, v, _, state = make_inputs(2, 8, 24, torch.float32, seed=2)
    kt = k.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    assert not kt.is_contiguous()
    with torch.no_grad():
        y, st = wkv4_fused_recurrent(w, u, kt, v, state, block_size=16)
    y_r, st_r = wkv4_naive(w, u, k, v, state)
    assert rel(y, y_r) < FP32_BOUND and rel(st[0], st_r[0]) < FP32_BOUND


def test_float64_routes_to_torch_path():
    w, u, k, v, _, state = make_inputs(1, 4, 6, torch.float64, seed=3)
    y, _ = wkv4_fused_recurrent(w.double(), u.double(), k, v, state)
    y_r, _ = wkv4_naive(w.double(), u.double(), k, v, state)
    assert y.dtype == torch.float64 and torch.allclose(y, y_r, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the references, in float64
# ---------------------------------------------------------------------------------------------

def _f64_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, L, D = 2, 5, 3
    w = (torch.rand(D, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    u = torch.randn(D, generator=g, dtype=torch.float64).requires_grad_()
    k = torch.randn(B, L, D, generator=g, dtype=torch.float64).requires_grad_()
    v = torch.randn(B, L, D, generator=g, dtype=torch.float64).requires_grad_()
    aa = torch.randn(B, D, generator=g, dtype=torch.float64).requires_grad_()
    bb = (torch.rand(B, D, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    pp = torch.randn(B, D, generator=g, dtype=torch.float64).requires_grad_()
    return w, u, k, v, aa, bb, pp


def _flat(result):
    y, state = result
    return (y, *state)


def test_gradcheck_naive_float64():
    # every input, the initial state included, and every output, the final state included
    ins = _f64_inputs()
    assert torch.autograd.gradcheck(lambda w, u, k, v, aa, bb, pp: _flat(wkv4_naive(w, u, k, v, (aa, bb, pp))), ins)


def test_gradcheck_torch_loop_and_chunk_float64():
    ins = _f64_inputs(1)
    assert torch.autograd.gradcheck(lambda w, u, k, v, aa, bb, pp: wkv4_torch_loop(w, u, k, v, (aa, bb, pp))[0], ins)
    chunk = lambda w, u, k, v, aa, bb, pp: _flat(wkv4_torch_chunk(w, u, k, v, (aa, bb, pp), chunk_size=2))
    assert torch.autograd.gradcheck(chunk, ins)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [wkv4, wkv4_fused_recurrent], ids=["public", "fused"])
def test_bad_inputs(fn):
    w, u, k, v, _, state = make_inputs(2, 4, 8, torch.float32)
    with pytest.raises(TypeError):
        fn(w, u, k.int(), v)
    with pytest.raises(TypeError):
        fn(w, u, k, v.half())  # k and v of different dtypes
    with pytest.raises(ValueError):
        fn(w, u, k, v[:, :3])  # shape mismatch
    with pytest.raises(ValueError):
        fn(w[:5], u, k, v)
    with pytest.raises(ValueError):
        fn(w, u, k[:, :0], v[:, :0])  # empty sequence
    with pytest.raises(ValueError):
        fn(w, u, k, v, (state[0][:1], state[1], state[2]))
    with pytest.raises(ValueError):
        fn(w.to("meta"), u, k, v)  # different devices
    with pytest.raises(ValueError):
        fn(w, u, k.reshape(8, 8), v.reshape(8, 8))  # not [B, L, D]


def test_fused_bad_block_size():
    w, u, k, v, _, _ = make_inputs(1, 2, 8, torch.float32)
    with pytest.raises(ValueError):
        wkv4_fused_recurrent(w, u, k, v, block_size=12)


# ---------------------------------------------------------------------------------------------
# GPU (compiled kernels, autotuned block, bf16, large shapes)
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("B,L,D", [(12, 1024, 768), (2, 4096, 100)])
def test_gpu_matches_torch_loop(dtype, bound, B, L, D):
    torch.manual_seed(0)
    w = (torch.rand(D, device="cuda") * 2 + 0.05)
    u = torch.randn(D, device="cuda")
    k = (torch.randn(B, L, D, device="cuda") * 2).to(dtype)
    v = torch.randn(B, L, D, device="cuda").to(dtype)
    gy = torch.randn(B, L, D, device="cuda").to(dtype)
    state = wkv4_init_state(B, D, "cuda")
    a = run(lambda *x: wkv4_fused_recurrent(*x), w, u, k, v, gy, state)
    b = run(wkv4_torch_loop, w, u, k.float(), v.float(), gy, state)
    assert rel(a[0].float(), b[0]) < bound
    for p, q in zip(a[1], b[1]):
        assert rel(p, q) < 1e-4
    # Gradients of the initial state decay by exp(-w L): after L=1024 steps they are ~1e-35,
    # where the reference's exponent floor (torch_loop.EXP_FLOOR = -80, e^-80 = 1.8e-35) and the
    # GPU's flush of smaller exps to 0 disagree. A gradient below 1e-6 of the upstream gradient's
    # size is numerically zero: compare with that floor.
    floor = 1e-6 * gy.float().norm().item()
    for name, p, q in zip(("w", "u", "k", "v", "aa", "bb", "pp"), a[2], b[2]):
        p, q = p.double(), q.double()
        err = (p - q).norm().item() / max(q.norm().item(), floor)
        assert err < max(bound, 1e-4), f"grad of {name}: relative error {err:.3g}"


@pytest.mark.parametrize("B,D", [(0, 4), (2, 0)])
def test_empty_batch_or_channels(B, D):
    w, u = torch.rand(D) + 0.1, torch.randn(D)
    k = torch.randn(B, 3, D, requires_grad=True)
    y, st = wkv4_fused_recurrent(w, u, k, torch.randn(B, 3, D))
    assert y.shape == (B, 3, D) and all(s.shape == (B, D) for s in st)
    y.sum().backward()
    assert k.grad.shape == (B, 3, D)
