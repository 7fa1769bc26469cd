"""Surrogate gradients, the LIF/PLIF torch path against the step-by-step reference, the adaptive neuron."""
import math

import pytest
import torch

from spikelm.kernels.lif import heaviside, lif_multistep, lif_naive, surrogate_grad
from spikelm.neurons import LIF, PLIF, AdaptiveSpike

PRIMITIVES = {  # the smooth functions whose derivative is the surrogate (SpikingJelly)
    "atan": lambda x, a: torch.atan(math.pi / 2 * a * x) / math.pi + 0.5,
    "sigmoid": lambda x, a: torch.sigmoid(a * x),
}


@pytest.mark.parametrize("name,alpha", [("atan", 2.0), ("atan", 5.0), ("sigmoid", 4.0), ("sigmoid", 1.5)])
def test_surrogate_is_derivative_of_its_primitive(name, alpha):
    x = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
    # gradcheck: the analytic derivative of the primitive equals finite differences ...
    assert torch.autograd.gradcheck(lambda t: PRIMITIVES[name](t, alpha), (x,))
    (g_prim,) = torch.autograd.grad(PRIMITIVES[name](x, alpha).sum(), x)
    # ... and the spike function's backward is exactly that derivative, forward the Heaviside step
    y = heaviside(x, name, alpha)
    (g_spike,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(g_spike, g_prim, rtol=1e-12, atol=1e-12)
    assert torch.allclose(surrogate_grad(x.detach(), name, alpha), g_prim)
    assert torch.equal(y.detach(), (x >= 0).double())


def test_atan_formula_value():
    x = torch.tensor([0.0, 0.5])
    expected = 2.0 / (2 * (1 + (math.pi / 2 * 2.0 * x) ** 2))
    assert torch.allclose(surrogate_grad(x, "atan", 2.0), expected)


CASES = [dict(v_reset=0.0, decay_input=True, detach_reset=False), dict(v_reset=None, decay_input=True, detach_reset=True),
         dict(v_reset=-0.2, decay_input=False, detach_reset=False), dict(v_reset=None, decay_input=False, detach_reset=False)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
def test_lif_fast_path_matches_reference(case, surrogate):
    T, N = 23, 37  # T, N odd
    x = (torch.randn(T, N, dtype=torch.float64) * 1.5).requires_grad_()
    v0 = torch.randn(N, dtype=torch.float64).mul(0.3).requires_grad_()
    tau = torch.tensor(2.7, dtype=torch.float64, requires_grad=True)
    gs, gv = torch.randn(T, N, dtype=torch.float64), torch.randn(N, dtype=torch.float64)
    kw = dict(v_th=1.0, surrogate=surrogate, alpha=3.0, **case)
    s1, v1 = lif_naive(x, v0, tau, **kw)
    g1 = torch.autograd.grad((s1 * gs).sum() + (v1 * gv).sum(), [x, v0, tau])
    s2, v2 = lif_multistep(x, v0, tau, **kw)
    g2 = torch.autograd.grad((s2 * gs).sum() + (v2 * gv).sum(), [x, v0, tau])
    assert torch.equal(s1, s2) and 0 < s1.mean() < 1
    assert torch.allclose(v1, v2, atol=1e-12)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)


def test_lif_chunked_equals_single_call():
    x = torch.randn(20, 5, 7) * 2
    s, v = lif_multistep(x)
    s1, v1 = lif_multistep(x[:8])
    s2, v2 = lif_multistep(x[8:], v1)
    assert torch.equal(torch.cat([s1, s2]), s) and torch.allclose(v2, v)


def test_lif_fp16_input():
    x = torch.randn(9, 11)
    s32, _ = lif_multistep(x)
    s16, v16 = lif_multistep(x.half())
    assert s16.dtype == torch.float16 and v16.dtype == torch.float32
    assert (s16.float() != s32).float().mean() < 0.05  # only threshold-adjacent flips from fp16 rounding


@pytest.mark.parametrize("bad,err", [(dict(tau=0.0), "tau must be > 0"), (dict(v_th=-1.0), "v_th must be > 0"),
                                     (dict(surrogate="relu"), "unknown surrogate")])
def test_lif_bad_arguments(bad, err):
    with pytest.raises(ValueError, match=err):
        lif_multistep(torch.randn(3, 4), **bad)


def test_lif_bad_dtype_and_shape():
    with pytest.raises(TypeError, match="dtype"):
        lif_multistep(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="v0 must have shape"):
        lif_multistep(torch.randn(3, 4), torch.zeros(5))


def test_plif_learns_tau():
    n = PLIF(init_tau=2.0)
    assert abs(float(n.tau.detach()) - 2.0) < 1e-6
    s, v = n(torch.randn(10, 6) * 3)
    (s.sum() + v.sum()).backward()
    assert n.w.grad is not None and n.w.grad != 0


def test_lif_module_validates():
    with pytest.raises(ValueError, match="v_reset"):
        LIF(v_th=1.0, v_reset=1.5)


def test_adaptive_ste_passes_gradient_through():
    x = torch.randn(4, 6, 32, requires_grad=True)
    layer = AdaptiveSpike("ste", k=3.0)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g)  # straight-through: identity gradient
    v_th = x.detach().abs().mean(-1, keepdim=True) / 3.0
    counts = y.detach() / v_th
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # integer multiples of the threshold
    assert (y.detach() - x.detach()).abs().max() <= v_th.max() / 2 + 1e-6


def test_adaptive_expanded_equals_integer_form():
    x = torch.randn(3, 5, 16)
    for enc in ("ternary", "bitwise"):
        a = AdaptiveSpike("ste", k=3.0)(x)
        b = AdaptiveSpike("expanded", k=3.0, steps=16, encoding=enc)(x)
        assert torch.equal(a, b)
