"""Triton LIF + residual add (``kernels/lif/fused_residual.py``) against the reference
``res + lif_naive(x)``, and the public ``lif_residual`` (``kernels/lif/residual.py``).

CPU tests run the Triton kernels through the interpreter. Error measure: max absolute error
(O(1) values); fp16 is compared with the reference in float32 on the same fp16 values (the
kernel computes in float32). Inputs are kept away from the threshold by construction where a
rounding difference could flip a spike (``make``).
"""
from __future__ import annotations

import pytest
import torch
from spikelm.kernels.lif import fused_residual as fres
from spikelm.kernels.lif import lif_multistep
from spikelm.kernels.lif.fused_residual import lif_residual_fused
from spikelm.kernels.lif.naive import lif_naive
from spikelm.kernels.lif.residual import lif_residual

B, T, N = 3, 7, 37
FP32_TOL = 1e-5
FP16_TOL = 4e-3

CONFIGS = [
    {"v_reset": 0.0, "decay_input": True, "detach_reset": False, "surrogate": "atan", "alpha": 2.0},
    {"v_reset": None, "decay_input": False, "detach_reset": True, "surrogate": "sigmoid", "alpha": 4.0},
    {"v_reset": -0.2, "decay_input": True, "detach_reset": True, "surrogate": "sigmoid", "alpha": 3.0, "v_th": 0.8},
]


def make(shape, dtype, seed=0, v_shape=None):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * 1.5 + 0.6).to(dtype)
    res = torch.randn(*shape, generator=g).to(dtype)
    v0 = (torch.randn(*(v_shape or shape[1:]), generator=g) * 0.5).float()
    gy = torch.randn(*shape, generator=g).to(dtype)
    gv = torch.randn(*(v_shape or shape[1:]), generator=g)
    return x, res, v0, gy, gv


def reference(res, x, v0, tau, time_dim=0, **cfg):
    """``res + lif_naive(x)`` in float32 (time-first), the potential and the rate."""
    xt = x.float().transpose(0, 1) if time_dim == 1 else x.float()
    s, v = lif_naive(xt, v0, tau, **cfg)
    if time_dim == 1:
        s = s.transpose(0, 1)
    return res.float() + s, v, s.detach().mean()


def fwd_bwd(fn, x, res, v0, gy, gv, **kw):
    x = x.clone().requires_grad_()
    res = res.clone().requires_grad_()
    v0 = v0.clone().requires_grad_() if v0 is not None else None
    tau = torch.tensor(2.0, requires_grad=True)
    y, v, rate = fn(res, x, v0, tau, **kw)
    loss = (y.float() * gy.float()).sum() + (v.float() * gv).sum()
    leaves = [x, res, tau] + ([v0] if v0 is not None else [])
    grads = torch.autograd.grad(loss, leaves)
    return [y.detach(), v.detach(), rate], list(grads)


def maxerr(a, b):
    assert torch.isfinite(a).all(), "non-finite values (uninitialised read?)"
    return (a.double() - b.double()).abs().max().item()


def flat(fn):
    """``lif_residual_fused`` on ``[T, N]`` (O = 1) with the ``v0 [N]`` of the time-first call."""
    def run(res, x, v0, tau, **cfg):
        y, v, rate = fn(res[None], x[None], v0, tau, **cfg)
        return y[0], v, rate
    return run


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_fused_matches_naive_time_first(dtype, cfg):
    x, res, v0, gy, gv = make((T, N), dtype)
    got, g_got = fwd_bwd(flat(lambda *a, **k: lif_residual_fused(*a, **k, block_size=16)), x, res, v0, gy, gv, **cfg)
    ref, g_ref = fwd_bwd(lambda r, x, v, t, **k: reference(r, x, v, t, **k), x.float(), res.float(), v0, gy, gv,
                         **cfg)
    tol = FP32_TOL if dtype == torch.float32 else FP16_TOL
    assert got[0].dtype == dtype and got[1].dtype == torch.float32 and got[2].shape == ()
    assert maxerr(got[0], ref[0]) <= tol and maxerr(got[1], ref[1]) <= 1e-5
    assert maxerr(got[2], ref[2]) <= 1e-6
    for name, a, b in zip(("x", "res", "tau", "v0"), g_got, g_ref):
        bound = tol * (T * N if name == "tau" else 1)
        assert maxerr(a, b) <= bound, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_public_op_token_axis_matches_naive(dtype, monkeypatch):
    """``time_dim=1`` on ``[B, L, N]`` (the block's layout) through the public op, several programs."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(fres, "_CPU_CHUNK", 3)  # a chunk that does not divide T
    x, res, v0, gy, gv = make((B, T, N), dtype, seed=1, v_shape=(B, N))
    got, g_got = fwd_bwd(lambda *a, **k: lif_residual(*a, **k, time_dim=1, backend="triton"), x, res, v0, gy, gv)
    ref, g_ref = fwd_bwd(lambda *a: reference(*a, time_dim=1), x.float(), res.float(), v0, gy, gv)
    tol = FP32_TOL if dtype == torch.float32 else FP16_TOL
    assert got[0].shape == (B, T, N) and got[1].shape == (B, N)
    assert maxerr(got[0], ref[0]) <= tol and maxerr(got[1], ref[1]) <= 1e-5 and maxerr(got[2], ref[2]) <= 1e-6
    for name, a, b in zip(("x", "res", "tau", "v0"), g_got, g_ref):
        assert maxerr(a, b) <= tol * (B * T * N if name == "tau" else 1), name


def test_at_rest_without_v0_and_state_continuation(monkeypatch):
    """``v0=None`` starts at rest; two calls chained through ``v_T`` equal one call."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, res, _, _, _ = make((2, 10, 19), torch.float32, seed=2)
    y, v, _ = lif_residual(res, x, None, time_dim=1, backend="triton")
    y_ref, v_ref, _ = reference(res, x, None, 2.0, time_dim=1)
    assert maxerr(y, y_ref) <= FP32_TOL and maxerr(v, v_ref) <= 1e-5
    y1, v1, _ = lif_residual(res[:, :4], x[:, :4], None, time_dim=1, backend="triton")
    y2, v2, _ = lif_residual(res[:, 4:], x[:, 4:], v1, time_dim=1, backend="triton")
    assert maxerr(torch.cat([y1, y2], 1), y) <= FP32_TOL and maxerr(v2, v) <= 1e-5


def test_torch_backend_is_the_unfused_block_code_exactly():
    """``backend="torch"``: ``fire_tokens``'s transpose + ``lif_multistep``, the add and the rate, bit for bit."""
    x, res, v0, _, _ = make((B, T, N), torch.float32, seed=3, v_shape=(B, N))
    y, v, rate = lif_residual(res, x, v0, 2.0, time_dim=1, backend="torch")
    s, v_ref = lif_multistep(x.transpose(0, 1).contiguous(), v0, 2.0)
    s = s.transpose(0, 1)
    assert torch.equal(y, res + s.to(res.dtype)) and torch.equal(v, v_ref)
    assert torch.equal(rate, s.detach().float().mean())


def test_dispatch_and_only_v_gradient(monkeypatch, spy):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = spy(fres, "lif_residual_fused")
    x, res, v0, _, gv = make((T, N), torch.float32, seed=4)
    xg = x.clone().requires_grad_()
    _, v, _ = lif_residual(res, xg, v0)  # auto: Triton under the interpreter
    assert calls == [1]
    (gx,) = torch.autograd.grad((v * gv).sum(), xg)  # no gradient through y: HAS_GY off
    xr = x.clone().requires_grad_()
    (gr,) = torch.autograd.grad((lif_naive(xr, v0)[1] * gv).sum(), xr)
    assert maxerr(gx, gr) <= FP32_TOL
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    lif_residual(res, x, v0)
    assert calls == [1]


def test_float64_routes_to_torch(monkeypatch, spy):
    """float64 takes the torch path even with ``backend="triton"`` (the surrogate gradient is not
    the derivative of the step, so there is no gradcheck: equality with the torch path instead)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = spy(fres, "lif_residual_fused")
    x, res, v0, _, _ = make((4, 3), torch.float64, seed=5)
    got = lif_residual(res, x, v0.double(), backend="triton")
    ref = lif_residual(res, x, v0.double(), backend="torch")
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("bad, match", [
    ({"res": torch.zeros(7, 36)}, "res and x must have one shape"),
    ({"v0": torch.zeros(36)}, r"v0 must have shape"),
    ({"time_dim": 2}, "time_dim must be 0 or 1"),
    ({"x": torch.zeros(0, 37), "res": torch.zeros(0, 37)}, "non-empty leading time axis"),
])
def test_bad_inputs_one_clear_error(bad, match):
    args = {"res": torch.zeros(7, 37), "x": torch.zeros(7, 37), "v0": torch.zeros(37), "time_dim": 0}
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        lif_residual(args["res"], args["x"], args["v0"], time_dim=args["time_dim"])
    with pytest.raises(ValueError, match=r"\[O, T, I\]"):
        lif_residual_fused(torch.zeros(1, 7, 36), torch.zeros(1, 7, 37), None)


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_kernels_compile_for_sm90(dt):
    """The kernels lower to a cubin for an H100 (``triton.compile``; no GPU needed)."""
    pytest.importorskip("triton.backends.nvidia")
    from tests.kernels.test_triton_compile import compile_kernel

    fwd = {"x_ptr": f"*{dt}", "res_ptr": f"*{dt}", "v0_ptr": "*fp32", "y_ptr": f"*{dt}", "h_ptr": "*fp32",
           "vT_ptr": "*fp32", "cnt_ptr": "*fp32", "T": "i32", "I": "i32", "TI": "i64", "inv_tau": "fp32",
           "decay": "fp32", "v_th": "fp32", "v_reset": "fp32", "inv_count": "fp32", "BLOCK": "constexpr",
           "CHUNK": "constexpr", "HARD": "constexpr", "DECAY_INPUT": "constexpr", "STORE_H": "constexpr",
           "HAS_V0": "constexpr"}
    for hard, v0 in ((True, False), (False, True)):
        compile_kernel(fres._lif_res_fwd_kernel, fwd, {"BLOCK": 128, "CHUNK": 8, "HARD": hard, "DECAY_INPUT": hard,
                                                       "STORE_H": True, "HAS_V0": v0}, num_warps=1)
    bwd = {"h_ptr": "*fp32", "x_ptr": f"*{dt}", "v0_ptr": "*fp32", "gy_ptr": f"*{dt}", "gvT_ptr": "*fp32",
           "gx_ptr": f"*{dt}", "gv0_ptr": "*fp32", "gtau_ptr": "*fp32", "T": "i32", "I": "i32", "TI": "i64",
           "LAST": "i64", "inv_tau": "fp32", "decay": "fp32", "v_th": "fp32", "v_reset": "fp32", "alpha": "fp32",
           "BLOCK": "constexpr", "CHUNK": "constexpr", "HARD": "constexpr", "DECAY_INPUT": "constexpr",
           "DETACH_RESET": "constexpr", "SURROGATE": "constexpr", "HAS_GY": "constexpr", "HAS_GV": "constexpr",
           "TAU_GRAD": "constexpr", "HAS_V0": "constexpr", "NEED_GV0": "constexpr"}
    for flags in ((True, True, True, True, True), (False, False, False, False, False)):
        compile_kernel(fres._lif_res_bwd_kernel, bwd, {
            "BLOCK": 64, "CHUNK": 16, "HARD": flags[0], "DECAY_INPUT": True, "DETACH_RESET": not flags[0],
            "SURROGATE": int(flags[1]), **dict(zip(("HAS_GY", "HAS_GV", "TAU_GRAD", "HAS_V0", "NEED_GV0"),
                                                    (True, *flags[1:])))}, num_warps=1)
