"""Gated RWKV-4 WKV (``kernels/wkv4/gated.py``; Triton: ``wkv4_gated_fused_recurrent``) against
the reference ``sigmoid(r) * wkv4_naive``.

CPU tests run the Triton kernels through the interpreter. Error measure: relative RMS error
``||a - b|| / ||b||`` (as ``test_wkv4.py``); fp16 inputs are compared with the reference in
float32 on the same fp16-representable values.
"""
from __future__ import annotations

import pytest
import torch
from spikelm.kernels.wkv4 import fused_recurrent as fr
from spikelm.kernels.wkv4 import wkv4
from spikelm.kernels.wkv4.fused_recurrent import wkv4_gated_fused_recurrent
from spikelm.kernels.wkv4.gated import wkv4_gated, wkv4_gated_naive
from spikelm.kernels.wkv4.naive import wkv4_naive

FP32_BOUND = 1e-5
FP32_GRAD_BOUND = 1e-4
FP16_OUT_BOUND = 2e-3


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values (uninitialised read or overflow?)"
    if b.norm() == 0:
        return a.norm().item()
    return ((a - b).norm() / b.norm()).item()


def make(B, L, D, dtype, seed=0, with_state=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(D, generator=g) * 2 + 0.05
    u = torch.randn(D, generator=g)
    k = (torch.randn(B, L, D, generator=g) * 2).to(dtype)
    v = torch.randn(B, L, D, generator=g).to(dtype)
    r = (torch.randn(B, L, D, generator=g) * 2).to(dtype)
    gy = torch.randn(B, L, D, generator=g).to(dtype)
    state = None
    if with_state:
        state = wkv4_naive(w, u, torch.randn(B, 3, D, generator=g) * 2, torch.randn(B, 3, D, generator=g))[1]
    return w, u, k, v, r, gy, state


def run(fn, w, u, k, v, r, gy, state, cast=None):
    cast = cast or (lambda t: t)
    ins = [w.clone(), u.clone(), cast(k), cast(v), cast(r)]
    ins = [t.detach().requires_grad_() for t in ins]
    st = None
    if state is not None:
        st = tuple(s.clone().requires_grad_() for s in state)
        ins += list(st)
    out, new = fn(*ins[:5], st)
    grads = torch.autograd.grad((out.float() * gy.float()).sum(), ins, allow_unused=True)
    grads = tuple(torch.zeros_like(i) if g is None else g for i, g in zip(ins, grads))
    return out.detach(), tuple(s.detach() for s in new), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_state", [False, True])
def test_fused_matches_naive(dtype, with_state):
    B, L, D = 3, 7, 37
    w, u, k, v, r, gy, state = make(B, L, D, dtype, with_state=with_state)
    out, st, g = run(lambda *a: wkv4_gated_fused_recurrent(*a, block_size=16), w, u, k, v, r, gy, state)
    out_r, st_r, g_r = run(wkv4_gated_naive, w, u, k, v, r, gy, state, cast=lambda t: t.float())
    assert out.dtype == dtype and out.shape == (B, L, D)
    assert rel(out.float(), out_r) < (FP32_BOUND if dtype == torch.float32 else FP16_OUT_BOUND)
    for a, b in zip(st, st_r):
        assert a.dtype == torch.float32 and rel(a, b) < FP32_BOUND
    names = ["w", "u", "k", "v", "r", "aa", "bb", "pp"]
    for name, a, b in zip(names, g, g_r):
        bound = FP16_OUT_BOUND if (dtype == torch.float16 and name in ("k", "v", "r")) else FP32_GRAD_BOUND
        assert rel(a.float(), b) < bound, name


def test_chunk_tail_and_wide_block(monkeypatch):
    """A CHUNK that does not divide L, and one program per row (block_size None on CPU)."""
    monkeypatch.setattr(fr, "_CPU_CHUNK", 3)
    w, u, k, v, r, gy, state = make(2, 8, 21, torch.float32, seed=1)
    out, st, g = run(wkv4_gated_fused_recurrent, w, u, k, v, r, gy, state)
    out_r, st_r, g_r = run(wkv4_gated_naive, w, u, k, v, r, gy, state)
    assert rel(out, out_r) < FP32_BOUND
    for a, b in zip(g + st, g_r + st_r):
        assert rel(a, b) < FP32_GRAD_BOUND


def test_state_continuation():
    """Two calls (the second from the first's state) equal one call over the whole sequence."""
    w, u, k, v, r, _, _ = make(2, 10, 19, torch.float32, seed=2, with_state=False)
    whole, st_whole = wkv4_gated_fused_recurrent(w, u, k, v, r)
    a, st = wkv4_gated_fused_recurrent(w, u, k[:, :6], v[:, :6], r[:, :6])
    b, st2 = wkv4_gated_fused_recurrent(w, u, k[:, 6:], v[:, 6:], r[:, 6:], st)
    assert rel(torch.cat([a, b], 1), whole) < FP32_BOUND
    for x, y in zip(st2, st_whole):
        assert rel(x, y) < FP32_BOUND


def test_torch_backend_is_the_unfused_code_exactly():
    """``backend="torch"``: ``wkv4`` then ``sigmoid(r) * y``, bit for bit (the CPU path)."""
    w, u, k, v, r, _, state = make(2, 5, 11, torch.float32, seed=3)
    out, st = wkv4_gated(w, u, k, v, r, state, backend="torch")
    y, st_ref = wkv4(w, u, k, v, state, backend="torch")
    assert torch.equal(out, torch.sigmoid(r) * y.to(r.dtype))
    for a, b in zip(st, st_ref):
        assert torch.equal(a, b)


def test_public_op_dispatches_to_triton_under_interpreter(monkeypatch, spy):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = spy(fr, "wkv4_gated_fused_recurrent")
    w, u, k, v, r, _, state = make(2, 4, 9, torch.float32, seed=4)
    out, _ = wkv4_gated(w, u, k, v, r, state)
    assert calls == [1]
    assert rel(out, wkv4_gated_naive(w, u, k, v, r, state)[0]) < FP32_BOUND
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    wkv4_gated(w, u, k, v, r, state)
    assert calls == [1]


def test_float64_gradcheck_routes_to_torch():
    w, u, k, v, r, _, _ = make(1, 3, 4, torch.float64, seed=5, with_state=False)
    ins = [t.double().requires_grad_() for t in (w, u, k, v, r)]
    assert torch.autograd.gradcheck(lambda *a: wkv4_gated_fused_recurrent(*a)[0], ins)


def test_bad_r_shape_one_clear_error():
    w, u, k, v, r, _, _ = make(2, 4, 9, torch.float32, with_state=False)
    for fn in (wkv4_gated, wkv4_gated_fused_recurrent):
        with pytest.raises(ValueError, match="r must be"):
            fn(w, u, k, v, r[:, :3])
    with pytest.raises(ValueError, match=r"k and v must both be \[B, L, D\]"):
        wkv4_gated(w, u, k, v[:, :3], r)


@pytest.mark.parametrize("dt", ["fp16", "bf16"])
def test_gated_kernels_compile_for_sm90(dt):
    """The gated kernels lower to a cubin for an H100 (``triton.compile``; no GPU needed), as
    ``test_triton_compile.py`` does for the ungated ones."""
    pytest.importorskip("triton.backends.nvidia")
    from tests.kernels.test_triton_compile import compile_kernel

    fwd = {"w_ptr": "*fp32", "u_ptr": "*fp32", "k_ptr": f"*{dt}", "v_ptr": f"*{dt}", "r_ptr": f"*{dt}",
           "aa_ptr": "*fp32", "bb_ptr": "*fp32", "pp_ptr": "*fp32", "y_ptr": f"*{dt}", "sa_ptr": "*fp32",
           "sb_ptr": "*fp32", "sp_ptr": "*fp32", "oa_ptr": "*fp32", "ob_ptr": "*fp32", "op_ptr": "*fp32",
           "B": "i32", "L": "i32", "D": "i32", "LD": "i32", "BLOCK": "constexpr", "CHUNK": "constexpr",
           "SAVE": "constexpr", "HAS_STATE": "constexpr"}
    for save, has_state in ((True, False), (False, True)):
        compile_kernel(fr._wkv4_gated_fwd_kernel, fwd, {"BLOCK": 64, "CHUNK": 8, "SAVE": save, "HAS_STATE": has_state},
                       num_warps=2)
    bwd = {"w_ptr": "*fp32", "u_ptr": "*fp32", "k_ptr": f"*{dt}", "v_ptr": f"*{dt}", "r_ptr": f"*{dt}",
           "gy_ptr": f"*{dt}", "sa_ptr": "*fp32", "sb_ptr": "*fp32", "sp_ptr": "*fp32", "gk_ptr": f"*{dt}",
           "gv_ptr": f"*{dt}", "gr_ptr": f"*{dt}", "gw_ptr": "*fp32", "gu_ptr": "*fp32", "gaa_ptr": "*fp32",
           "gbb_ptr": "*fp32", "gpp_ptr": "*fp32", "B": "i32", "L": "i32", "D": "i32", "LD": "i64", "LAST": "i64",
           "BLOCK": "constexpr", "CHUNK": "constexpr", "STATE_GRAD": "constexpr"}
    for state_grad in (True, False):
        compile_kernel(fr._wkv4_gated_bwd_kernel, bwd, {"BLOCK": 128, "CHUNK": 8, "STATE_GRAD": state_grad},
                       num_warps=4)
