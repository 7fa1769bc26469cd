"""``kernels.custom_op.opaque_op``: the saved-tensor backward runs the kernel's hand-written
backward without a second forward, and its gradients (eager call and under ``torch.compile``)
equal those of the kernel's autograd Function; the recompute fallback still differentiates.

The compiled checks use ``backend="aot_eager"`` (AOTAutograd without Inductor): they test the
op's autograd formula and fake functions in a second or two, not code generation
(``tests/train/test_compile.py`` compiles every layout with Inductor).

In the full suite the compiled checks run in a fresh interpreter (``test_in_a_fresh_process``),
as ``tests/train/test_compile.py``'s do: after hundreds of other tests in one process, Dynamo's
fake-tensor call of these ops failed with ``MemoryError('std::bad_alloc')`` (clean-clone CI,
2026-12-02), which a fresh process never did. ``SPIKELM_COMPILE_TESTS=here`` runs them here."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikelm.kernels import lif as lif_pkg
from spikelm.kernels import wkv4 as wkv4_pkg
from spikelm.kernels.custom_op import opaque_op
from spikelm.kernels import triton_utils
from spikelm.kernels.gla import gla
from spikelm.kernels.lif import fused_residual, lif_multistep
from spikelm.kernels.lif import torch_loop as lif_loop
from spikelm.kernels.wkv4 import torch_loop as wkv4_loop
from spikelm.kernels.lif.residual import lif_residual
from spikelm.kernels.token_shift import fused as ts_fused
from spikelm.kernels.token_shift import token_shift_mix
from spikelm.kernels.wkv4 import fused_recurrent as wkv4_fused
from spikelm.kernels.wkv4 import wkv4
from spikelm.kernels.wkv4.gated import wkv4_gated


HERE = os.environ.get("SPIKELM_COMPILE_TESTS") == "here"
in_child = pytest.mark.skipif(not HERE, reason="runs in a fresh process: test_in_a_fresh_process")


@pytest.mark.skipif(HERE, reason="this is the fresh process")
def test_in_a_fresh_process():
    env = dict(os.environ, SPIKELM_COMPILE_TESTS="here", OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)), "-k", "runs_no_forward"]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "11 passed" in r.stdout and " failed" not in r.stdout, r.stdout[-3000:]


class _Counter:
    """Wraps ``fn`` and counts its calls (the real function runs)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _lif_args(tau):
    torch.manual_seed(0)
    x = (torch.randn(9, 3, 5) * 1.5).requires_grad_()
    v0 = torch.randn(3, 5).requires_grad_()
    return x, v0, tau


def _lif_loss(x, v0, tau):
    s, v = lif_multistep(x, v0, tau, 1.0, 0.0, True, False, "atan", 2.0, backend="torch")
    return (s * torch.linspace(-1, 1, s.shape[-1])).sum() + v.square().sum()


@in_child
@pytest.mark.parametrize("plif", [False, True])
def test_lif_saved_tensor_backward_runs_no_forward_and_matches_eager(monkeypatch, plif):
    tau = torch.tensor(2.5, requires_grad=True) if plif else 2.5
    x, v0, tau = _lif_args(tau)
    leaves = [x, v0] + ([tau] if plif else [])
    ref = torch.autograd.grad(_lif_loss(x, v0, tau), leaves)
    fwd = _Counter(lif_loop.lif_torch_forward)
    for module in (lif_pkg, lif_loop):  # the op's forward, and the Function a recompute would run
        monkeypatch.setattr(module, "lif_torch_forward", fwd)
    torch._dynamo.reset()
    loss = torch.compile(_lif_loss, backend="aot_eager", fullgraph=True)(x, v0, tau)
    calls = fwd.calls  # tracing runs the fake, not the impl: 1 = the compiled forward
    got = torch.autograd.grad(loss, leaves)
    assert calls == 1 and fwd.calls == 1  # the backward ran no forward
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)


def _lif_res_loss(res, x, v0, tau):
    y, v, _ = lif_residual(res, x, v0, tau, time_dim=1, backend="triton")
    return (y * torch.linspace(-1, 1, y.shape[-1])).sum() + v.square().sum()


@in_child
@pytest.mark.parametrize("plif", [False, True])
def test_lif_residual_triton_saved_tensor_backward_runs_no_forward_and_matches_eager(monkeypatch, plif):
    """The Triton path (in the interpreter): ``spikelm::lif_residual`` launches its forward kernel
    once; the backward kernel runs on the saved potentials."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    B, T, N = 2, 9, 5
    x, res = ((torch.randn(B, T, N) * 1.5).requires_grad_() for _ in range(2))
    v0 = torch.randn(B, N).requires_grad_()
    tau = torch.tensor(2.5, requires_grad=True) if plif else 2.5
    leaves = [res, x, v0] + ([tau] if plif else [])
    ref = torch.autograd.grad(_lif_res_loss(res, x, v0, tau), leaves)
    fwd = _Counter(fused_residual.lif_residual_forward)
    monkeypatch.setattr(fused_residual, "lif_residual_forward", fwd)
    torch._dynamo.reset()
    loss = torch.compile(_lif_res_loss, backend="aot_eager", fullgraph=True)(res, x, v0, tau)
    got = torch.autograd.grad(loss, leaves)
    assert fwd.calls == 1  # once forward, none in the backward
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)


def _ts_loss(x, prev, *mus):
    outs = token_shift_mix(x, prev, mus, backend="triton")
    return sum((o * torch.linspace(-1, 1, o.shape[-1]) * (i + 1)).sum() for i, o in enumerate(outs))


@in_child
def test_token_shift_triton_backward_runs_no_forward_and_matches_eager(monkeypatch):
    """``spikelm::token_shift_mix`` launches the forward kernel once; its backward only the
    backward kernel."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    x, prev = torch.randn(2, 7, 5).requires_grad_(), torch.randn(2, 5).requires_grad_()
    mus = [torch.rand(5).requires_grad_() for _ in range(3)]
    leaves = [x, prev, *mus]
    ref = torch.autograd.grad(_ts_loss(x, prev, *mus), leaves)
    launches = []
    real = ts_fused._launch
    monkeypatch.setattr(ts_fused, "_launch", lambda fn, *a: launches.append(fn.__name__) or real(fn, *a))
    torch._dynamo.reset()
    loss = torch.compile(_ts_loss, backend="aot_eager", fullgraph=True)(x, prev, *mus)
    got = torch.autograd.grad(loss, leaves)
    assert launches == ["_ts_fwd_kernel", "_ts_bwd_kernel"]
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)


def _wkv_loss(w, u, k, v, state):
    y, (aa, bb, pp) = wkv4(w, u, k, v, state, backend="torch")
    return (y * torch.linspace(-1, 1, y.shape[-1])).sum()


@in_child
@pytest.mark.parametrize("with_state", [False, True])
def test_wkv4_saved_tensor_backward_runs_no_forward_and_matches_eager(monkeypatch, with_state):
    torch.manual_seed(0)
    B, L, D = 2, 7, 4
    w = (torch.rand(D) + 0.2).requires_grad_()
    u, k, v = (torch.randn(s).requires_grad_() for s in ((D,), (B, L, D), (B, L, D)))
    state = tuple((torch.randn(B, D) * 0.1).requires_grad_() for _ in range(3)) if with_state else None
    leaves = [w, u, k, v] + (list(state) if with_state else [])
    ref = torch.autograd.grad(_wkv_loss(w, u, k, v, state), leaves)
    fwd = _Counter(wkv4_loop.wkv4_torch_forward)
    for module in (wkv4_pkg, wkv4_loop):
        monkeypatch.setattr(module, "wkv4_torch_forward", fwd)
    torch._dynamo.reset()
    loss = torch.compile(_wkv_loss, backend="aot_eager", fullgraph=True)(w, u, k, v, state)
    got = torch.autograd.grad(loss, leaves)
    assert fwd.calls == 1  # once forward, none in the backward
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)


def _gated_loss(w, u, k, v, r, state):
    out, _ = wkv4_gated(w, u, k, v, r, state, backend="triton")
    return (out * torch.linspace(-1, 1, out.shape[-1])).sum()


@in_child
@pytest.mark.parametrize("with_state", [False, True])
def test_wkv4_gated_triton_saved_tensor_backward_runs_no_forward_and_matches_eager(monkeypatch, with_state):
    """``spikelm::wkv4_gated`` launches the gated forward kernel once; the backward kernel runs on
    the saved per-token states."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    B, L, D = 2, 7, 16
    w = (torch.rand(D) + 0.2).requires_grad_()
    u, k, v, r = (torch.randn(s).requires_grad_() for s in ((D,), (B, L, D), (B, L, D), (B, L, D)))
    state = tuple((torch.randn(B, D) * 0.1).requires_grad_() for _ in range(3)) if with_state else None
    leaves = [w, u, k, v, r] + (list(state) if with_state else [])
    ref = torch.autograd.grad(_gated_loss(w, u, k, v, r, state), leaves)
    launches = []
    real = wkv4_fused._launch
    monkeypatch.setattr(wkv4_fused, "_launch", lambda fn, *a, **kw: launches.append(fn.__name__) or real(fn, *a, **kw))
    torch._dynamo.reset()
    loss = torch.compile(_gated_loss, backend="aot_eager", fullgraph=True)(w, u, k, v, r, state)
    got = torch.autograd.grad(loss, leaves)
    assert launches == ["_wkv4_gated_fwd_kernel", "_wkv4_gated_bwd_kernel"]
    for g, ref_g in zip(got, ref):
        torch.testing.assert_close(g, ref_g, rtol=1e-5, atol=1e-5)


def _gla_loss(q, k, v, g, h0):
    o, ht = gla(q, k, v, g, None, h0, mode="chunk")
    return (o * torch.linspace(-1, 1, o.shape[-1])).sum() + ht.square().sum()


@in_child
@pytest.mark.parametrize("with_state", [False, True])
def test_gla_chunk_triton_saved_tensor_backward_runs_no_forward_and_matches_eager(monkeypatch, with_state):
    """``spikelm::gla_chunk`` runs its four forward kernels once; the backward kernels run on the
    saved gate cumsum, chunk states and scores."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    B, L, H, K, V = 1, 20, 2, 16, 16
    q, k = (torch.randn(B, L, H, K).requires_grad_() for _ in range(2))
    v = torch.randn(B, L, H, V).requires_grad_()
    g = (-torch.rand(B, L, H, K) * 0.5).requires_grad_()
    h0 = (torch.randn(B, H, K, V) * 0.1).requires_grad_() if with_state else None
    leaves = [q, k, v, g] + ([h0] if with_state else [])
    ref = torch.autograd.grad(_gla_loss(q, k, v, g, h0), leaves)
    launches = []
    real = triton_utils.kernel
    monkeypatch.setattr(triton_utils, "kernel", lambda fn, *a: launches.append(fn.__name__) or real(fn, *a))
    torch._dynamo.reset()
    loss = torch.compile(_gla_loss, backend="aot_eager", fullgraph=True)(q, k, v, g, h0)
    got = torch.autograd.grad(loss, leaves)
    assert launches.count("_fwd_o_kernel") == 1 and launches.count("_bwd_dqk_kernel") == 1, launches
    for grad, r in zip(got, ref):
        torch.testing.assert_close(grad, r, rtol=1e-4, atol=1e-4)


def test_eager_call_of_a_saved_tensor_op_and_the_recompute_fallback():
    """Called outside torch.compile too; outputs never alias inputs; an unused output gets no
    gradient; the recompute fallback gives the same gradients as the saved-tensor op."""

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, scale):
            ctx.save_for_backward(x)
            ctx.scale = scale
            return x * x * scale, x  # the second output is the input itself

        @staticmethod
        def backward(ctx, g, g_same):
            (x,) = ctx.saved_tensors
            gx = 2 * x * ctx.scale * g if g is not None else torch.zeros_like(x)
            return gx + (g_same if g_same is not None else 0), None

    def impl(x, scale):  # differentiable through an autograd Function (the recompute's contract)
        return Square.apply(x, scale)

    backward_calls = []

    def saved_impl(x, scale):
        return (x * x * scale, x), (2 * x * scale,)

    def saved_bwd(args, saved, grads, needs):
        backward_calls.append(needs)
        g = saved[0] * grads[0] + (grads[1] if grads[1] is not None else 0)
        return g, None

    fake = lambda x, scale: (torch.empty_like(x), torch.empty_like(x))  # noqa: E731
    recompute = opaque_op("test_square_recompute", impl, fake)
    saved = opaque_op("test_square_saved", saved_impl, fake, backward=saved_bwd,
                      fake_saved=lambda x, scale: (torch.empty_like(x),))
    with pytest.raises(ValueError, match="registered already"):
        opaque_op("test_square_saved", saved_impl, fake)
    with pytest.raises(ValueError, match="needs fake_saved"):
        opaque_op("test_square_other", saved_impl, fake, backward=saved_bwd)
    x = torch.randn(4, requires_grad=True)
    for op in (recompute, saved):
        y, same = op(x, 3.0)
        assert same.data_ptr() != x.data_ptr()
        torch.testing.assert_close(same, x.detach())
        (g,) = torch.autograd.grad(y.sum(), x, retain_graph=True)  # `same` unused: its gradient is None
        torch.testing.assert_close(g, 6 * x.detach())
        (g,) = torch.autograd.grad((y + same).sum(), x)
        torch.testing.assert_close(g, 6 * x.detach() + 1)
    assert backward_calls == [[True, False], [True, False]]
