"""Triton token shift + mixes (``kernels/token_shift/fused.py``) against the reference ``naive.py``.

CPU tests run the Triton kernel through the interpreter. Error measure: max absolute error
(inputs are O(1)); fp16 is compared with the reference evaluated in float32 on the same
(fp16-representable) values, because the kernel computes in float32.
"""
from __future__ import annotations

import pytest
import torch
from spikelm.kernels.token_shift import fused, token_shift_mix, token_shift_mix_naive
from spikelm.kernels.token_shift.fused import token_shift_mix_fused

from spikelm.layers.token_shift import mix, token_shift

B, L, D = 3, 7, 37  # odd shapes: partial tiles in every axis
FP32_TOL = 1e-5
FP16_TOL = 4e-3  # fp16 output rounding (2^-11 relative) of O(1) values, plus fp16 input gradients


def make(dtype, n, with_prev, seed=0, shape=(B, L, D)):
    g = torch.Generator().manual_seed(seed)
    b, l, d = shape
    x = torch.randn(b, l, d, generator=g).to(dtype)
    prev = torch.randn(b, d, generator=g).to(dtype) if with_prev else None
    mus = [torch.rand(d, generator=g) for _ in range(n)]  # fp32 parameters, as in the layers
    mus[0][:3] = torch.tensor([0.0, 1.0, 0.5])  # lerp's exact ends and its branch point
    gs = [torch.randn(b, l, d, generator=g).to(dtype) for _ in range(n)]
    return x, prev, mus, gs


def fwd_bwd(fn, x, prev, mus, gs, dtype=None):
    """Outputs and gradients (x, prev, mus) of ``fn``; inputs cast to ``dtype`` first when given."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    x = cast(x).detach().requires_grad_()
    prev = cast(prev).detach().requires_grad_() if prev is not None else None
    mus = [m.detach().clone().requires_grad_() for m in mus]
    outs = fn(x, prev, mus)
    leaves = [x] + ([prev] if prev is not None else []) + mus
    grads = torch.autograd.grad(outs, leaves, [cast(g) for g in gs])
    return [o.detach() for o in outs], list(grads)


def maxerr(a, b):
    assert torch.isfinite(a).all(), "non-finite values (uninitialised read?)"
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("with_prev", [False, True])
def test_fused_matches_naive(dtype, n, with_prev):
    x, prev, mus, gs = make(dtype, n, with_prev)
    got, g_got = fwd_bwd(token_shift_mix_fused, x, prev, mus, gs)
    ref, g_ref = fwd_bwd(token_shift_mix_naive, x, prev, mus, gs, dtype=torch.float32)
    tol = FP32_TOL if dtype == torch.float32 else FP16_TOL
    assert all(o.dtype == dtype and o.shape == (B, L, D) for o in got)
    for a, b in zip(got, ref):
        assert maxerr(a, b) <= tol
    for a, b in zip(g_got, g_ref):
        # dmu sums B * L products: scale the bound with it
        assert maxerr(a, b) <= (tol if a.dim() > 1 else tol * B * L)


def test_many_programs_and_narrow_blocks(monkeypatch):
    """Several token tiles (row 0 of the shift, the +1 token of dx across tile borders) and
    channel blocks (``block_size=16``), and the [n, P, D] partial sums of dmu."""
    monkeypatch.setattr(fused, "_CPU_ELEMENTS", 32)  # 2 tokens per program with BD = 16
    x, prev, mus, gs = make(torch.float32, 3, True, seed=1)
    got, g_got = fwd_bwd(lambda x, p, m: token_shift_mix_fused(x, p, m, block_size=16), x, prev, mus, gs)
    ref, g_ref = fwd_bwd(token_shift_mix_naive, x, prev, mus, gs)
    for a, b in zip(got + g_got, ref + g_ref):
        assert maxerr(a, b) <= FP32_TOL * B * L


def test_unused_outputs_and_no_mu_grad():
    """Outputs without a gradient count as 0; frozen mus get none."""
    x, prev, mus, gs = make(torch.float32, 3, True, seed=2)
    xs = x.clone().requires_grad_()
    out = token_shift_mix_fused(xs, prev, mus)  # nothing but x requires grad
    (gx,) = torch.autograd.grad(out[1], xs, gs[1])
    xr = x.clone().requires_grad_()
    (gr,) = torch.autograd.grad(token_shift_mix_naive(xr, prev, mus)[1], xr, gs[1])
    assert maxerr(gx, gr) <= FP32_TOL


def test_state_continuation():
    """Two calls with ``prev`` = the first call's last token equal one call over the whole sequence."""
    x, _, mus, _ = make(torch.float32, 2, False, seed=3, shape=(2, 9, 21))
    whole = token_shift_mix_fused(x, None, mus)
    first = token_shift_mix_fused(x[:, :4], None, mus)
    second = token_shift_mix_fused(x[:, 4:], x[:, 3], mus)
    for w, a, b in zip(whole, first, second):
        assert maxerr(torch.cat([a, b], 1), w) <= FP32_TOL


def test_decode_step_single_token():
    x, prev, mus, gs = make(torch.float32, 3, True, seed=4, shape=(2, 1, 19))
    got, g_got = fwd_bwd(token_shift_mix_fused, x, prev, mus, gs)
    ref, g_ref = fwd_bwd(token_shift_mix_naive, x, prev, mus, gs)
    for a, b in zip(got + g_got, ref + g_ref):
        assert maxerr(a, b) <= FP32_TOL


def test_torch_backend_is_the_layers_code_exactly():
    """``backend="torch"`` is ``token_shift`` + ``mix`` of ``spikelm.layers.token_shift``, bit for bit."""
    x, prev, mus, _ = make(torch.float32, 3, True, seed=5)
    got = token_shift_mix(x, prev, mus, backend="torch")
    xx = token_shift(x, prev)
    for o, mu in zip(got, mus):
        assert torch.equal(o, mix(x, xx, mu))


def test_public_op_dispatches_to_triton_under_interpreter(monkeypatch, spy):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = spy(fused, "token_shift_mix_fused")
    x, prev, mus, _ = make(torch.float32, 2, True, seed=6)
    got = token_shift_mix(x, prev, mus, backend="auto")
    assert calls == [1]
    for a, b in zip(got, token_shift_mix_naive(x, prev, mus)):
        assert maxerr(a, b) <= FP32_TOL
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    token_shift_mix(x, prev, mus)
    assert calls == [1]  # the torch path without the interpreter


def test_float64_gradcheck_routes_to_torch():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    prev = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mus = tuple(torch.rand(5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda x, p, a, b: token_shift_mix_fused(x, p, (a, b)), (x, prev, *mus))


@pytest.mark.parametrize("bad, match", [
    ({"prev": torch.zeros(3, 36)}, r"prev must be \[B, D\]"),
    ({"mus": (torch.zeros(36),)}, r"mus\[0\] must be \[D\]"),
    ({"x": torch.zeros(3, 0, 37)}, "L > 0"),
    ({"x": torch.zeros(3, 37)}, r"\[B, L, D\]"),
    ({"mus": ()}, "1 to 3"),
    ({"mus": tuple(torch.zeros(37) for _ in range(4))}, "1 to 3"),
])
def test_bad_inputs_one_clear_error(bad, match):
    args = {"x": torch.zeros(3, 7, 37), "prev": torch.zeros(3, 37), "mus": (torch.zeros(37),)}
    args.update(bad)
    for fn in (token_shift_mix, token_shift_mix_fused):
        with pytest.raises(ValueError, match=match):
            fn(args["x"], args["prev"], args["mus"])


def test_mus_not_a_sequence():
    with pytest.raises(TypeError, match="tuple or list"):
        token_shift_mix(torch.zeros(1, 2, 3), None, torch.zeros(3))


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_kernels_compile_for_sm90(dt):
    """The kernels lower to a cubin for an H100 (``triton.compile``; no GPU needed), with
    vectorised loads of the contiguous channel rows."""
    pytest.importorskip("triton.backends.nvidia")
    from tests.kernels.test_triton_compile import compile_kernel, global_ops

    ptrs = {"x_ptr": f"*{dt}", "prev_ptr": f"*{dt}", "mu0_ptr": "*fp32", "mu1_ptr": "*fp32", "mu2_ptr": "*fp32"}
    fwd = {**ptrs, "o0_ptr": f"*{dt}", "o1_ptr": f"*{dt}", "o2_ptr": f"*{dt}", "L": "i32", "D": "i32",
           "LB": "constexpr", "BD": "constexpr", "N_MU": "constexpr", "HAS_PREV": "constexpr"}
    k = compile_kernel(fused._ts_fwd_kernel, fwd, {"LB": 8, "BD": 128, "N_MU": 3, "HAS_PREV": True},
                       aligned=tuple(fwd)[:8] + ("D",))
    assert any(op.startswith("ld.global.v") for op in global_ops(k)), global_ops(k)
    compile_kernel(fused._ts_fwd_kernel, fwd, {"LB": 8, "BD": 128, "N_MU": 2, "HAS_PREV": False})
    bwd = {**ptrs, "g0_ptr": f"*{dt}", "g1_ptr": f"*{dt}", "g2_ptr": f"*{dt}", "dx_ptr": f"*{dt}",
           "dprev_ptr": f"*{dt}", "dmu_ptr": "*fp32", "L": "i32", "D": "i32", "P": "i32", "LB": "constexpr",
           "BD": "constexpr", "HAS_PREV": "constexpr", "HAS_G0": "constexpr", "HAS_G1": "constexpr",
           "HAS_G2": "constexpr", "NEED_DX": "constexpr", "NEED_DPREV": "constexpr", "NEED_DMU": "constexpr"}
    for flags in ((True, True, True, True, True, True, True), (False, True, False, False, True, False, False)):
        compile_kernel(fused._ts_bwd_kernel, bwd, {"LB": 8, "BD": 128, **dict(zip(
            ("HAS_PREV", "HAS_G0", "HAS_G1", "HAS_G2", "NEED_DX", "NEED_DPREV", "NEED_DMU"), flags))})
