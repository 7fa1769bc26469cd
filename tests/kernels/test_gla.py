"""Gated linear attention kernels (``kernels/gla``) against the token-by-token reference ``naive.py``.

The Triton kernels (``chunk.py``, ``fused_recurrent.py``) run on CPU tensors through Triton's
interpreter. Error measure: relative RMS error ``||a - b|| / ||b||``; bounds are stated at each
comparison. fp16 inputs are compared with the float32 reference on the same fp16-representable
values: both compute in float32, so only the fp16 rounding of the stored outputs (``o``, ``dq``,
``dk``, ``dv``, ``dg`` are returned in the input dtype) separates them. Fresh allocations of
the Triton modules are filled with NaN (uninitialised reads show up as NaN).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spikelm.kernels.gla import gla, gla_naive, gla_torch_chunk
from spikelm.kernels.gla.chunk import gla_chunk
from spikelm.kernels.gla.fused_recurrent import gla_fused_recurrent

FP32_OUT = 1e-5   # o and the final state: same recurrence, different summation order
FP32_GRAD = 1e-4  # gradients (dg is a reverse cumulative sum of products: more rounding)
FP16_OUT = 3e-3   # tensors stored in fp16 (2^-11 ~ 4.9e-4 relative per element)

# fresh allocations of chunk.py and fused_recurrent.py are NaN-filled by conftest's autouse fixture


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values (uninitialised read or overflow?)"
    if b.norm() == 0:
        return a.norm().item()
    return ((a - b).norm() / b.norm()).item()


def make(B, L, H, K, V, dtype=torch.float32, seed=0, with_state=True, gate_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, L, H, K, generator=g).to(dtype)
    k = torch.randn(B, L, H, K, generator=g).to(dtype)
    v = torch.randn(B, L, H, V, generator=g).to(dtype)
    gate = F.logsigmoid(torch.randn(B, L, H, K, generator=g) * gate_scale)  # SpikingBrain: logsigmoid(.)/16
    h0 = torch.randn(B, H, K, V, generator=g) if with_state else None
    do = torch.randn(B, L, H, V, generator=g).to(dtype)
    dht = torch.randn(B, H, K, V, generator=g)
    return q, k, v, gate, h0, do, dht


def run(fn, q, k, v, g, h0, do, dht):
    """Forward + backward of ``sum(o * do) + sum(ht * dht)``; returns (o, ht, grads of q, k, v, g[, h0])."""
    ins = [t.clone().requires_grad_() for t in (q, k, v, g)] + ([h0.clone().requires_grad_()] if h0 is not None else [])
    o, ht = fn(*ins[:4], None, ins[4] if h0 is not None else None)
    loss = (o.float() * do.float()).sum() + (ht.float() * dht).sum()
    return o.detach(), ht.detach(), torch.autograd.grad(loss, ins)


def reference(q, k, v, g, h0, do, dht):
    return run(gla_naive, q.float(), k.float(), v.float(), g, h0, do, dht)


def compare(got, ref, dtype):
    o, ht, grads = got
    o_r, ht_r, grads_r = ref
    assert o.dtype == dtype and ht.dtype == torch.float32
    assert rel(o.float(), o_r) < (FP32_OUT if dtype == torch.float32 else FP16_OUT)
    assert rel(ht, ht_r) < (FP32_OUT if dtype == torch.float32 else FP16_OUT)
    for name, a, b in zip(("q", "k", "v", "g", "h0"), grads, grads_r):
        bound = FP32_GRAD if (dtype == torch.float32 or name in ("h0",)) else FP16_OUT
        assert rel(a.float(), b) < bound, name


# ----------------------------------------------------------------------------------------------
# torch paths
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk,pairwise", [(1, None), (8, True), (8, False), (32, None)])
def test_torch_chunk_matches_naive(chunk, pairwise):
    args = make(2, 37, 3, 5, 7)
    got = run(lambda q, k, v, g, s, h0: gla_torch_chunk(q, k, v, g, s, h0, chunk, pairwise), *args)
    compare(got, reference(*args), torch.float32)


def test_torch_chunk_is_stable_for_extreme_gates():
    """Chunks whose total decay exceeds e^-60 switch to the pairwise form (no exp overflow)."""
    q, k, v, g, h0, do, dht = make(2, 40, 2, 4, 3)
    g[0, 10:20, 1] = -30.0  # one chunk of one head of one row: the others keep the matmul form
    got = run(lambda q, k, v, g, s, h0: gla_torch_chunk(q, k, v, g, s, h0, chunk_size=32), q, k, v, g, h0, do, dht)
    compare(got, reference(q, k, v, g, h0, do, dht), torch.float32)  # values and finite gradients


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_paths_return_the_input_dtype(dtype):
    q, k, v, g, h0, _, _ = make(1, 9, 2, 4, 3, dtype)
    for fn in (gla_naive, gla_torch_chunk, gla):
        o, ht = fn(q, k, v, g, None, h0)
        assert o.dtype == dtype and ht.dtype == torch.float32
        assert rel(o.float(), gla_naive(q.float(), k.float(), v.float(), g, None, h0)[0]) < 1e-2


def test_naive_and_torch_chunk_gradcheck_fp64():
    q, k, v, g, h0, _, _ = make(1, 5, 1, 2, 3)
    ins = [t.double().requires_grad_() for t in (q, k, v, g, h0)]
    assert torch.autograd.gradcheck(lambda *a: gla_naive(*a[:4], 0.7, a[4]), ins)
    assert torch.autograd.gradcheck(lambda *a: gla_torch_chunk(*a[:4], 0.7, a[4], chunk_size=2), ins)


# ----------------------------------------------------------------------------------------------
# Triton (interpreter)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,L,H,K,V,block_v,with_state", [(2, 11, 2, 20, 37, 16, None), (1, 1, 3, 16, 16, None, False)])
def test_fused_recurrent_matches_naive(dtype, B, L, H, K, V, block_v, with_state):
    args = make(B, L, H, K, V, dtype, with_state=with_state is None)
    got = run(lambda q, k, v, g, s, h0: gla_fused_recurrent(q, k, v, g, s, h0, block_v=block_v), *args)
    compare(got, reference(*args), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_chunk_matches_naive_odd_shapes(dtype):
    # L = 37: two chunks of 32 (two 16-token sub-chunks each, the last one partial);
    # K = 20, V = 24 with 16-wide blocks: two key and two value blocks, both partial
    args = make(1, 37, 2, 20, 24, dtype)
    got = run(lambda q, k, v, g, s, h0: gla_chunk(q, k, v, g, s, h0, chunk_size=32, block_k=16, block_v=16), *args)
    compare(got, reference(*args), dtype)


def test_chunk_single_token_without_state_and_extreme_gates():
    args = make(1, 1, 2, 16, 16, with_state=False)
    got = run(lambda q, k, v, g, s, h0: gla_chunk(q, k, v, g, s, h0, chunk_size=16), *args)
    compare(got, reference(*args), torch.float32)
    q, k, v, g, h0, do, dht = make(1, 20, 1, 16, 16)
    g[:, 3:9] = -40.0  # total decay e^-240 inside one chunk: every exponent stays <= 0
    got = run(lambda q, k, v, g, s, h0: gla_chunk(q, k, v, g, s, h0, chunk_size=16), q, k, v, g, h0, do, dht)
    compare(got, reference(q, k, v, g, h0, do, dht), torch.float32)


def test_chunk_continues_from_its_final_state():
    q, k, v, g, h0, _, _ = make(1, 40, 1, 16, 16)
    o, ht = gla_chunk(q, k, v, g, None, h0, chunk_size=16)
    o1, h1 = gla_chunk(q[:, :23], k[:, :23], v[:, :23], g[:, :23], None, h0, chunk_size=16)
    o2, h2 = gla_fused_recurrent(q[:, 23:], k[:, 23:], v[:, 23:], g[:, 23:], None, h1)
    assert rel(torch.cat([o1, o2], 1), o) < FP32_OUT and rel(h2, ht) < FP32_OUT


def test_dispatch_and_errors(monkeypatch):
    q, k, v, g, h0, _, _ = make(1, 6, 1, 4, 4)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    o, ht = gla(q, k, v, g, initial_state=h0)  # CPU: torch chunked
    o_r, ht_r = gla_naive(q, k, v, g, initial_state=h0)
    assert rel(o, o_r) < FP32_OUT and rel(ht, ht_r) < FP32_OUT
    o1, _ = gla(q[:, :1], k[:, :1], v[:, :1], g[:, :1], initial_state=h0)  # one token: the naive step
    assert rel(o1, o_r[:, :1]) < FP32_OUT
    with pytest.raises(ValueError, match="needs Triton"):
        gla(q, k, v, g, mode="chunk")
    with pytest.raises(ValueError, match="accepted: auto, chunk, fused_recurrent, torch, naive"):
        gla(q, k, v, g, mode="fast")
    with pytest.raises(ValueError, match=r"v must be \[B, L, H, V\]"):
        gla(q, k, v[:, :3], g)
    with pytest.raises(ValueError, match=r"q, k and g must all be"):
        gla(q, k[..., :3], v, g)
    with pytest.raises(TypeError, match="share a dtype"):
        gla(q, k.half(), v, g)
    with pytest.raises(ValueError, match="empty sequence"):
        gla(q[:, :0], k[:, :0], v[:, :0], g[:, :0])
    with pytest.raises(ValueError, match="initial_state must be"):
        gla(q, k, v, g, initial_state=h0[:, :, :2])
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        gla_chunk(q, k, v, g, chunk_size=24)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    o2, ht2 = gla(q, k, v, g, initial_state=h0, mode="fused_recurrent")
    assert rel(o2, o_r) < FP32_OUT and rel(ht2, ht_r) < FP32_OUT


# ----------------------------------------------------------------------------------------------
# ahead-of-time compilation for sm_90 (catches what the interpreter accepts but Triton rejects)
# ----------------------------------------------------------------------------------------------

def _compile_all(dt: str, bt: int, full: bool):
    pytest.importorskip("triton.backends.nvidia")
    from .test_triton_compile import compile_kernel
    from spikelm.kernels.gla import chunk as C
    from spikelm.kernels.gla import fused_recurrent as FR

    P = lambda *names, d=dt: {n: f"*{d}" for n in names}  # noqa: E731
    F32 = lambda *names: P(*names, d="fp32")  # noqa: E731
    I32 = lambda *names: {n: "i32" for n in names}  # noqa: E731
    CX = lambda *names: {n: "constexpr" for n in names}  # noqa: E731
    lowp = dt != "fp32"
    common = dict(LOWP=lowp, PREC="ieee" if not lowp else "tf32")
    compile_kernel(C._cumsum_kernel, {**P("g_ptr"), **F32("gc_ptr"), **I32("L", "H", "K"), **CX("BT", "BK")},
                   {"BT": bt, "BK": 64})
    compile_kernel(C._fwd_h_kernel, {**P("k_ptr", "v_ptr"), **F32("gc_ptr", "h_ptr", "h0_ptr", "ht_ptr"),
                                     **I32("L", "H", "K", "V", "NT"), **CX("BT", "BK", "BV", "HAS_H0", "LOWP", "PREC")},
                   dict(BT=bt, BK=64, BV=64, HAS_H0=True, **common))
    compile_kernel(C._fwd_o_kernel, {**P("q_ptr", "v_ptr"), **F32("gc_ptr", "h_ptr", "A_ptr"), **P("o_ptr"),
                                     "scale": "fp32", **I32("L", "H", "K", "V", "NT"),
                                     **CX("BT", "BK", "BV", "LOWP", "PREC")}, dict(BT=bt, BK=64, BV=64, **common))
    compile_kernel(C._bwd_dh_kernel, {**P("q_ptr", "do_ptr"), **F32("gc_ptr", "dh_ptr", "dht_ptr", "dh0_ptr"),
                                      "scale": "fp32", **I32("L", "H", "K", "V", "NT"),
                                      **CX("BT", "BK", "BV", "HAS_DHT", "LOWP", "PREC")},
                   dict(BT=bt, BK=64, BV=64, HAS_DHT=True, **common))
    compile_kernel(C._bwd_dA_kernel, {**P("do_ptr", "v_ptr"), **F32("dA_ptr"), "scale": "fp32", **I32("L", "H", "V"),
                                      **CX("BT", "BV", "LOWP", "PREC")}, dict(BT=bt, BV=64, **common))
    compile_kernel(C._bwd_dv_kernel, {**P("k_ptr"), **F32("gc_ptr", "A_ptr"), **P("do_ptr"), **F32("dh_ptr"),
                                      **P("dv_ptr"), **I32("L", "H", "K", "V", "NT"),
                                      **CX("BT", "BK", "BV", "LOWP", "PREC")}, dict(BT=bt, BK=64, BV=64, **common))
    compile_kernel(FR._fwd_kernel, {**P("q_ptr", "k_ptr", "v_ptr", "g_ptr"), **F32("h0_ptr"), **P("o_ptr"),
                                    **F32("ht_ptr"), "scale": "fp32", **I32("L", "H", "K", "V"),
                                    **CX("BK", "BV", "HAS_H0", "STORE_HT")}, dict(BK=128, BV=64, HAS_H0=True, STORE_HT=True))
    compile_kernel(FR._bwd_kernel, {**P("q_ptr", "k_ptr", "v_ptr", "g_ptr"), **F32("h0_ptr"), **P("do_ptr"),
                                    **F32("dht_ptr", "dq_ptr", "dk_ptr"), **P("dv_ptr"), **F32("dh0_ptr"),
                                    "scale": "fp32", **I32("B", "L", "H", "K", "V"),
                                    **CX("BK", "BV", "HAS_H0", "HAS_DHT")}, dict(BK=128, BV=64, HAS_H0=True, HAS_DHT=True))
    if full:  # the sub-chunk kernels unroll NC * NC and NC * 16 blocks: slow to compile at BT = 64
        nc = bt // 16
        compile_kernel(C._fwd_A_kernel, {**P("q_ptr", "k_ptr"), **F32("gc_ptr", "A_ptr"), "scale": "fp32",
                                         **I32("L", "H", "K"), **CX("BT", "BC", "BK", "NC", "LOWP", "PREC")},
                       dict(BT=bt, BC=16, BK=64, NC=nc, **common))
        compile_kernel(C._bwd_dqk_kernel, {**P("q_ptr", "k_ptr", "v_ptr"), **F32("gc_ptr", "h_ptr", "dh_ptr"),
                                           **P("do_ptr"), **F32("dA_ptr", "dq_ptr", "dk_ptr"), "scale": "fp32",
                                           **I32("L", "H", "K", "V", "NT"),
                                           **CX("BT", "BC", "BK", "BV", "NC", "LOWP", "PREC")},
                       dict(BT=bt, BC=16, BK=64, BV=64, NC=nc, **common))


def test_gla_kernels_compile_for_sm90():
    _compile_all("bf16", 16, full=True)


@pytest.mark.slow
@pytest.mark.parametrize("dt", ["bf16", "fp32"])
def test_gla_kernels_compile_for_sm90_at_training_chunk(dt):
    _compile_all(dt, 64, full=True)


def test_benchmark_quick_runs(capsys):
    from spikelm.kernels.gla import bench

    assert bench.main(["--quick", "--reps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "| gla |" in out and "torch_chunk" in out
