"""Triton LIF / PLIF (``kernels/lif/fused_recurrent.py``) against the reference ``naive.py``.

CPU tests run the Triton kernels through the interpreter. Error measure: relative RMS error
``||a - b|| / ||b||``; the bound is stated at every comparison. fp16 inputs are compared with
the reference evaluated in float32 on the same (fp16-representable) values, because the kernel
computes in float32 while ``lif_naive`` computes in the input dtype.
"""
from __future__ import annotations

import math

import pytest
import torch

from spikelm.kernels import triton_utils
from spikelm.kernels.lif import lif_multistep
from spikelm.kernels.lif import fused_recurrent as fr
from spikelm.kernels.lif.fused_recurrent import lif_fused_recurrent
from spikelm.kernels.lif.naive import lif_naive
from spikelm.kernels.lif.surrogate import surrogate_grad
from spikelm.kernels.lif.torch_loop import LIFTorchFunction

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FP32_BOUND = 1e-5   # fp32 kernel vs fp32 reference: same formula, different rounding order
FP16_OUT_BOUND = 2e-3  # outputs/gradients stored in fp16 (half-precision rounding, 2^-11 ~ 4.9e-4 per element)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values (uninitialised read?)"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(T, N, dtype, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, N, generator=g) * scale + 0.6).to(dtype)
    v0 = (torch.randn(N, generator=g) * 0.5).float()
    gs = torch.randn(T, N, generator=g).to(dtype)
    gv = torch.randn(N, generator=g)
    return x, v0, gs, gv


def run(fn, x, v0, tau, gs, gv, loss, **cfg):
    """Forward + backward of ``fn``; returns (spikes, v_T, gx, gv0, gtau)."""
    x = x.clone().requires_grad_()
    v0 = v0.clone().requires_grad_()
    tau_t = torch.tensor(float(tau), dtype=torch.float32, requires_grad=True)
    s, v = fn(x, v0, tau_t, **cfg)
    terms = []
    if loss in ("both", "spikes"):
        terms.append((s.float() * gs.float()).sum())
    if loss in ("both", "v"):
        terms.append((v.float() * gv).sum())
    gx, gv0, gtau = torch.autograd.grad(sum(terms), (x, v0, tau_t))
    return s.detach(), v.detach(), gx, gv0, gtau


CONFIGS = [
    dict(v_reset=v_reset, decay_input=decay, detach_reset=detach, surrogate=sur, alpha=alpha, v_th=v_th)
    for v_reset, v_th in ((0.0, 1.0), (None, 1.0), (-0.3, 0.7))
    for decay in (True, False)
    for detach in (False, True)
    for sur, alpha in (("atan", 2.0), ("sigmoid", 4.0))
]


def _cfg_id(c):
    reset = "soft" if c["v_reset"] is None else f"hard{c['v_reset']}"
    return f"{reset}-{'decay' if c['decay_input'] else 'nodecay'}-{'detach' if c['detach_reset'] else 'attached'}-{c['surrogate']}"


def check_against_naive(T, N, dtype, cfg, loss="both", block_size=16, tau=2.5, seed=0):
    x, v0, gs, gv = make_inputs(T, N, dtype, seed)
    out = run(lambda *a, **k: lif_fused_recurrent(*a, **k, block_size=block_size), x, v0, tau, gs, gv, loss, **cfg)
    ref = run(lif_naive, x.float(), v0, tau, gs, gv, loss, **cfg)
    s, v, gx, gv0, gtau = out
    s_r, v_r, gx_r, gv0_r, gtau_r = ref
    assert s.dtype == dtype and v.dtype == torch.float32 and gx.dtype == dtype
    # spikes are exactly {0, 1} and equal to the reference's
    assert torch.equal(s.float(), s_r), "spike trains differ"
    assert rel(v, v_r) < FP32_BOUND  # state is fp32 in both
    gx_bound = FP32_BOUND if dtype == torch.float32 else FP16_OUT_BOUND
    assert rel(gx.float(), gx_r) < gx_bound
    assert rel(gv0, gv0_r) < 1e-5  # fp32 gradient of the fp32 initial state
    assert abs(gtau.item() - gtau_r.item()) <= 1e-4 * max(1.0, abs(gtau_r.item()))  # fp32 sum of T*N terms


@pytest.mark.parametrize("cfg", CONFIGS, ids=[_cfg_id(c) for c in CONFIGS])
def test_fp32_all_modes_match_naive(cfg):
    # T = 7 steps, N = 37 neurons over blocks of 16 (3 programs, the last one partial)
    check_against_naive(7, 37, torch.float32, cfg)


@pytest.mark.parametrize("cfg", CONFIGS[::3], ids=[_cfg_id(c) for c in CONFIGS[::3]])
def test_fp16_matches_naive(cfg):
    check_against_naive(7, 37, torch.float16, cfg)


@pytest.mark.parametrize("T,N,block", [(1, 5, 16), (1, 100, 32), (5, 1, 16), (33, 20, 16), (4, 130, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_odd_shapes(T, N, block, dtype):
    check_against_naive(T, N, dtype, CONFIGS[0], block_size=block, seed=T * 1000 + N)


@pytest.mark.parametrize("chunk", [1, 3, 8])
@pytest.mark.parametrize("T", [1, 8, 10])
def test_time_chunks(chunk, T, monkeypatch):
    # steps per chunk (loads issued ahead): T a multiple of it, not a multiple, or shorter
    monkeypatch.setattr(fr, "_CPU_CHUNK", chunk)
    check_against_naive(T, 21, torch.float32, CONFIGS[1], seed=chunk * 100 + T)


@pytest.mark.parametrize("loss", ["spikes", "v"])
def test_partial_upstream_gradients(loss):
    # only spikes (v_T unused: no gradient into v_T) or only v_T (no gradient into spikes)
    check_against_naive(6, 37, torch.float32, CONFIGS[2], loss=loss)


def test_default_block_and_public_shapes(monkeypatch, spy):
    # the public function under TRITON_INTERPRET=1 dispatches to the fused kernel on CPU
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = spy(fr, "lif_fused_recurrent")
    x = (torch.randn(5, 3, 11) * 2).requires_grad_()
    tau = torch.tensor(3.0, requires_grad=True)
    s, v = lif_multistep(x, None, tau, 1.0, 0.0, True, False, "atan", 2.0)
    assert calls, "public lif_multistep did not dispatch to the fused kernel"
    assert s.shape == x.shape and v.shape == (3, 11)
    (s.sum() + v.sum()).backward()
    x2 = x.detach().clone().requires_grad_()
    tau2 = torch.tensor(3.0, requires_grad=True)
    s2, v2 = lif_naive(x2, None, tau2)
    (s2.sum() + v2.sum()).backward()
    assert torch.equal(s, s2)
    assert rel(x.grad, x2.grad) < FP32_BOUND
    assert abs(tau.grad.item() - tau2.grad.item()) <= 1e-4 * max(1.0, abs(tau2.grad.item()))


def test_chunked_calls_equal_one_call():
    """Two calls with v_T carried equal one call: outputs and every gradient (through the carry)."""
    T, N, split = 11, 37, 4
    x, v0, gs, gv = make_inputs(T, N, torch.float32, seed=3)
    cfg = dict(v_reset=0.0, decay_input=True, detach_reset=False, surrogate="atan", alpha=2.0, v_th=1.0)

    def chunked(x, v0, tau, **cfg):
        s1, v1 = lif_fused_recurrent(x[:split], v0, tau, **cfg, block_size=16)
        s2, v2 = lif_fused_recurrent(x[split:].contiguous(), v1, tau, **cfg, block_size=16)
        return torch.cat([s1, s2]), v2

    one = run(lambda *a, **k: lif_fused_recurrent(*a, **k, block_size=16), x, v0, 2.0, gs, gv, "both", **cfg)
    two = run(chunked, x, v0, 2.0, gs, gv, "both", **cfg)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])  # bitwise: same fp32 ops
    for a, b in zip(one[2:], two[2:]):
        assert rel(a, b) < FP32_BOUND


def test_tau_gradient_deterministic_and_nan_poisoning_active():
    # the autouse fixture makes fresh allocations NaN: the kernels must write every slot they read
    assert torch.isnan(triton_utils.empty((3,), torch.float32, "cpu")).all()
    x, v0, gs, gv = make_inputs(9, 70, torch.float32, seed=5)
    cfg = CONFIGS[0]
    a = run(lambda *a, **k: lif_fused_recurrent(*a, **k, block_size=16), x, v0, 2.0, gs, gv, "both", **cfg)
    b = run(lambda *a, **k: lif_fused_recurrent(*a, **k, block_size=16), x, v0, 2.0, gs, gv, "both", **cfg)
    assert torch.equal(a[4], b[4])  # per-block partial sums reduced by torch: bitwise reproducible


def test_no_grad_forward_skips_saving():
    x, v0, _, _ = make_inputs(6, 37, torch.float32)
    with torch.no_grad():
        s, v = lif_fused_recurrent(x, v0, 2.0, block_size=16)
    s_r, v_r = lif_naive(x, v0, 2.0)
    assert torch.equal(s, s_r) and rel(v, v_r) < FP32_BOUND


def test_float64_routes_to_torch_path():
    x, v0, _, _ = make_inputs(4, 6, torch.float64)
    s, v = lif_fused_recurrent(x, v0.double(), 2.0)
    s_r, v_r = lif_naive(x, v0.double(), 2.0)
    assert s.dtype == torch.float64 and torch.equal(s, s_r) and torch.allclose(v, v_r, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the references, in float64
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("decay_input", [True, False])
def test_gradcheck_references_float64(v_reset, decay_input):
    """gradcheck of naive and torch_loop through ``v_T`` with ``detach_reset=True``.

    The spike function's backward is a surrogate (not its derivative), so gradcheck can only
    check paths that do not differentiate through ``H``: with the reset detached and the loss
    on ``v_T``, the gradient is the exact derivative of the leaky dynamics (for x, v0 and tau).
    """
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 1.5 + 0.5).requires_grad_()
    v0 = (torch.randn(5, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    tau = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    kw = dict(v_th=1.0, v_reset=v_reset, decay_input=decay_input, detach_reset=True)
    assert lif_naive(x, v0, tau, **kw)[0].sum() > 0  # some spikes, so the reset path is exercised
    assert torch.autograd.gradcheck(lambda x, v0, tau: lif_naive(x, v0, tau, **kw)[1], (x, v0, tau))
    loop = lambda x, v0, tau: LIFTorchFunction.apply(x, v0, tau, 1.0, v_reset, decay_input, True, "atan", 2.0)[1]
    assert torch.autograd.gradcheck(loop, (x, v0, tau))


def test_torch_loop_matches_naive_surrogate_gradients_float64():
    # with the surrogate (not gradcheck-able), torch_loop must equal naive's autograd in float64
    x, v0, gs, gv = make_inputs(8, 9, torch.float64, seed=2)
    v0 = v0.double()
    for v_reset in (0.0, None):
        cfg = dict(v_reset=v_reset, decay_input=True, detach_reset=False, surrogate="sigmoid", alpha=4.0, v_th=1.0)
        a = run(lambda x, v0, tau, **k: LIFTorchFunction.apply(x, v0, tau.double(), k["v_th"], k["v_reset"],
                                                               k["decay_input"], k["detach_reset"], k["surrogate"],
                                                               k["alpha"]), x, v0, 2.0, gs, gv.double(), "both", **cfg)
        b = run(lambda x, v0, tau, **k: lif_naive(x, v0, tau.double(), **k), x, v0, 2.0, gs, gv.double(), "both", **cfg)
        for p, q in zip(a[1:], b[1:]):
            assert rel(p, q) < 1e-6  # float32 tau tensor in run(); everything else float64


@pytest.mark.parametrize("name,alpha", [("atan", 2.0), ("sigmoid", 4.0), ("atan", 0.5)])
def test_surrogate_is_derivative_of_its_primitive(name, alpha):
    x = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
    prim = torch.atan(math.pi / 2 * alpha * x) / math.pi + 0.5 if name == "atan" else torch.sigmoid(alpha * x)
    (d,) = torch.autograd.grad(prim.sum(), x)
    assert torch.allclose(surrogate_grad(x.detach(), name, alpha), d, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def test_public_bad_inputs():
    x = torch.randn(4, 3)
    with pytest.raises(TypeError):
        lif_multistep(torch.ones(4, 3, dtype=torch.int32))
    with pytest.raises(ValueError):
        lif_multistep(x, v0=torch.zeros(4))
    with pytest.raises(ValueError):
        lif_multistep(x, tau=0.0)
    with pytest.raises(ValueError):  # a tau tensor's value is not read (no host sync), its shape is checked
        lif_multistep(x, tau=torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError):
        lif_multistep(x, v_th=0.0)
    with pytest.raises(ValueError):
        lif_multistep(x, surrogate="relu")
    with pytest.raises(ValueError):
        lif_multistep(torch.randn(0, 3))


def test_fused_bad_inputs():
    x, v0 = torch.randn(4, 6), torch.zeros(6)
    with pytest.raises(TypeError):
        lif_fused_recurrent(x.int(), v0)
    with pytest.raises(ValueError):
        lif_fused_recurrent(x, torch.zeros(5))
    with pytest.raises(ValueError):
        lif_fused_recurrent(x.t(), torch.zeros(4))  # non-contiguous
    with pytest.raises(ValueError):
        lif_fused_recurrent(x, v0.to("meta"))  # different devices
    with pytest.raises(ValueError):
        lif_fused_recurrent(x, v0, tau=-2.0)
    with pytest.raises(ValueError):
        lif_fused_recurrent(x, v0, v_th=-1.0)
    with pytest.raises(ValueError):
        lif_fused_recurrent(x, v0, alpha=0.0)
    with pytest.raises(ValueError):
        lif_fused_recurrent(x, v0, block_size=24)
    with pytest.raises(ValueError):
        lif_fused_recurrent(x, v0, tau=torch.tensor([2.0, 3.0]))  # PLIF tau is one number


def test_one_element_tau_tensor_gradient_shape():
    x, v0, gs, _ = make_inputs(5, 20, torch.float32, seed=8)
    tau = torch.tensor([2.5], requires_grad=True)
    s, _ = lif_fused_recurrent(x.requires_grad_(), v0, tau, block_size=16)
    (s * gs).sum().backward()
    tau0 = torch.tensor(2.5, requires_grad=True)
    s0, _ = lif_naive(x.detach(), v0, tau0)
    (s0 * gs).sum().backward()
    assert tau.grad.shape == (1,)
    assert abs(tau.grad.item() - tau0.grad.item()) <= 1e-4 * max(1.0, abs(tau0.grad.item()))


# ---------------------------------------------------------------------------------------------
# GPU (compiled kernels, autotuned block, bf16, large shapes)
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("T,N", [(16, 100_003), (1024, 9216)])
@pytest.mark.parametrize("plif", [False, True])
def test_gpu_matches_torch_loop(dtype, bound, T, N, plif):
    torch.manual_seed(0)
    x = (torch.randn(T, N, device="cuda") * 1.5 + 0.5).to(dtype)
    v0 = torch.zeros(N, device="cuda")
    gs = torch.randn(T, N, device="cuda").to(dtype)
    gv = torch.randn(N, device="cuda")

    def go(fn):
        xx = x.clone().requires_grad_()
        tau = torch.tensor(2.0, device="cuda", requires_grad=True) if plif else 2.0
        s, v = fn(xx, v0, tau)
        ins = (xx, tau) if plif else (xx,)
        grads = torch.autograd.grad((s.float() * gs.float()).sum() + (v * gv).sum(), ins)
        return s, v, grads

    s, v, g = go(lif_fused_recurrent)  # compiled kernels, autotuned block
    s_r, v_r, g_r = go(lambda x, v0, tau: LIFTorchFunction.apply(x.float(), v0, tau, 1.0, 0.0, True, False, "atan", 2.0))
    # GPU fma/rounding may flip a spike where h is within an ulp of v_th; the flip then changes
    # that neuron's later dynamics, so neurons with any flip are excluded from the comparison
    same = (s.float() == s_r).all(0)
    assert same.float().mean().item() > 0.999
    assert rel(v[same], v_r[same]) < 1e-5  # fp32 state
    assert rel(g[0][:, same].float(), g_r[0][:, same].float()) < bound  # gx in the input dtype
    if plif and bool(same.all()):
        assert abs(g[1].item() - g_r[1].item()) <= 1e-3 * max(1.0, abs(g_r[1].item()))  # fp32 sum of T*N terms


def test_empty_neuron_axis():
    x = torch.randn(3, 0, requires_grad=True)
    s, v = lif_fused_recurrent(x, torch.zeros(0))
    assert s.shape == (3, 0) and v.shape == (0,)
    s.sum().backward()
    assert x.grad.shape == (3, 0)
