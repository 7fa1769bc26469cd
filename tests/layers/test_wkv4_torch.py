"""The CPU WKV paths (hand-written backward, chunked autograd) against the token-by-token reference."""
import pytest
import torch

from spikelm.kernels.wkv4 import wkv4, wkv4_init_state, wkv4_naive, wkv4_torch_chunk, wkv4_torch_loop


def _inputs(B=2, L=29, D=11, scale=4.0, dtype=torch.float64):
    w = (torch.rand(D, dtype=dtype) * 3 + 0.01).requires_grad_()
    u = torch.randn(D, dtype=dtype).requires_grad_()
    k = (torch.randn(B, L, D, dtype=dtype) * scale).requires_grad_()
    v = torch.randn(B, L, D, dtype=dtype).requires_grad_()
    return w, u, k, v


@pytest.mark.parametrize("fn", [wkv4_torch_loop, wkv4_torch_chunk])
def test_matches_reference_values_and_gradients(fn):
    w, u, k, v = _inputs()
    st = [torch.randn(2, 11, dtype=torch.float64), torch.rand(2, 11, dtype=torch.float64) + 0.5,
          torch.randn(2, 11, dtype=torch.float64)]
    for s in st:
        s.requires_grad_()
    gy = torch.randn(2, 29, 11, dtype=torch.float64)
    y1, s1 = wkv4_naive(w, u, k, v, st)
    g1 = torch.autograd.grad((y1 * gy).sum(), [w, u, k, v, *st])
    y2, s2 = fn(w, u, k, v, st)
    g2 = torch.autograd.grad((y2 * gy).sum(), [w, u, k, v, *st])
    assert torch.allclose(y1, y2, atol=1e-12)
    for a, b in zip(s1, s2):
        assert torch.allclose(a, b, atol=1e-12)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)


def test_gradcheck_reference_and_fast_path():
    w, u, k, v = _inputs(B=1, L=6, D=3, scale=2.0)
    assert torch.autograd.gradcheck(lambda *a: wkv4_naive(*a)[0], (w, u, k, v))
    assert torch.autograd.gradcheck(lambda *a: wkv4_torch_loop(*a)[0], (w, u, k, v))


def test_state_carried_across_calls():
    w, u, k, v = (t.detach().float() for t in _inputs(L=40))
    y, s = wkv4(w, u, k, v)
    ya, sa = wkv4(w, u, k[:, :17], v[:, :17])
    yb, sb = wkv4(w, u, k[:, 17:], v[:, 17:], sa)
    assert torch.allclose(torch.cat([ya, yb], 1), y, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(s, sb))


def test_huge_keys_stay_finite():
    w, u, k, v = (t.detach().float() for t in _inputs(L=300, scale=200.0))
    y, _ = wkv4(w, u, k, v)
    assert torch.isfinite(y).all()


def test_bad_input():
    w, u, k, v = (t.detach().float() for t in _inputs())
    with pytest.raises(ValueError, match=r"\[B, L, D\]"):
        wkv4(w, u, k[0], v[0])
    with pytest.raises(TypeError, match="share a dtype"):
        wkv4(w, u, k, v.half())
    with pytest.raises(ValueError, match="w and u must be"):
        wkv4(w[:3], u, k, v)
    with pytest.raises(ValueError, match="state must be"):
        wkv4(w, u, k, v, wkv4_init_state(3, 11))
