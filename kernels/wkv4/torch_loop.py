"""Fast torch WKV for CPU: one short loop over time forward and backward, the rest vectorised.

Values equal ``naive.wkv4_naive``. Only the state recursion runs token by token (forward:
``(aa, bb, pp)``; backward: its adjoint); every per-token output and gradient is computed
afterwards over the whole ``[B, L, D]`` tensor at once. With ``A_t = e^{pp_t} aa_t`` and
``B_t = e^{pp_t} bb_t`` the (unnormalised) state entering token ``t``::

    y_t       = (A_t + e^{u+k_t} v_t) / den_t,  den_t = B_t + e^{u+k_t} = e^{q_t} d_t
    gA_t      = gy_t / den_t + e^{-w} gA_{t+1}          gB_t = -gy_t y_t / den_t + e^{-w} gB_{t+1}
    gk_t      = gy_t e^{u+k_t} (v_t - y_t) / den_t + e^{k_t} (v_t gA_{t+1} + gB_{t+1})
    gv_t      = gy_t e^{u+k_t} / den_t + e^{k_t} gA_{t+1}
    gu        = sum_t gy_t e^{u+k_t} (v_t - y_t) / den_t
    gw        = -sum_t e^{-w} (A_t gA_{t+1} + B_t gB_{t+1})

The adjoints are kept as ``gA_t = e^{o_t} ga_t`` with a running maximum ``o_t`` (the same
trick as the RWKV-4 CUDA backward), so every exponent evaluated is <= 0. Gradients flow into
the initial state; the returned final state is not differentiable (use ``torch_chunk`` to
backpropagate through it).
"""
from __future__ import annotations

import torch

from .naive import EMPTY_PP, wkv4_init_state

EXP_FLOOR = -80.0
"""Exponents below this are raised to it before ``exp``: ``e^-80 ~ 1.8e-35`` is invisible next to
the running-max term (which is 1), but results in the denormal range (arguments -87..-104)
make CPU ``exp`` 15-20x slower, and the decayed WKV terms land there all the time."""


def _exp(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x.clamp_(min=EXP_FLOOR))


def _wkv4_scan(wf: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               p: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The state recursion: ``wf [D]``, ``kt, vt [L, B, D]`` (time first), the state ``a, b, p [B, D]``
    -> ``(A, Bs, P)`` ``[L, B, D]``, the state entering each token, and the final ``(a, b, p)``."""
    A = torch.empty((kt.shape[0],) + a.shape, dtype=a.dtype, device=a.device)
    Bs, P = torch.empty_like(A), torch.empty_like(A)
    for t in range(kt.shape[0]):
        A[t], Bs[t], P[t] = a, b, p
        pw = p - wf
        np_ = torch.maximum(pw, kt[t])
        e1, e2 = _exp(pw - np_), _exp(kt[t] - np_)
        a = e1 * a + e2 * vt[t]
        b = e1 * b + e2
        p = np_
    return A, Bs, P, a, b, p


def _wkv4_adjoint(wf: torch.Tensor, nq: torch.Tensor, c: torch.Tensor, cy: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
    """The adjoint recursion, backward in time: ``wf [D]``, ``nq, c, cy [L, B, D]`` -> ``(O1, GA1,
    GB1)`` ``[L, B, D]`` (``(o, ga, gb)`` of step ``t + 1`` at ``t``) and ``(o, ga, gb)`` ``[B, D]``
    of step 0."""
    O1, GA1, GB1 = torch.empty_like(c), torch.empty_like(c), torch.empty_like(c)
    o = torch.full_like(c[0], EMPTY_PP)
    ga, gb = torch.zeros_like(c[0]), torch.zeros_like(c[0])
    for t in range(c.shape[0] - 1, -1, -1):
        O1[t], GA1[t], GB1[t] = o, ga, gb
        ow = o - wf
        no = torch.maximum(ow, nq[t])
        f1, f2 = _exp(ow - no), _exp(nq[t] - no)
        ga = f1 * ga + f2 * c[t]
        gb = f1 * gb - f2 * cy[t]
        o = no
    return O1, GA1, GB1, o, ga, gb


def wkv4_torch_forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, aa: torch.Tensor,
                       bb: torch.Tensor, pp: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The forward (module docstring): ``w, u [D]``, ``k, v [B, L, D]``, ``aa, bb, pp [B, D]`` ->
    ``((y [B, L, D] in v.dtype, aa, bb, pp [B, D] final state), saved)``; the state and ``saved``
    in the accumulation dtype (float32; float64 for float64 ``v``). ``saved = (A, Bs, P, q, d,
    y, e2)``, each ``[L, B, D]``: what :func:`wkv4_torch_backward` needs besides the inputs.
    ``y`` here is the time-first one (the output is its ``transpose(0, 1)``, a view for float32)."""
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    wf, uf = w.to(acc), u.to(acc)
    kt, vt = k.to(acc).transpose(0, 1), v.to(acc).transpose(0, 1)  # [L, B, D] views
    a, b, p = aa.to(acc), bb.to(acc), pp.to(acc)
    A, Bs, P, a, b, p = _wkv4_scan(wf, kt, vt, a, b, p)
    uk = uf + kt
    q = torch.maximum(P, uk)
    e1, e2 = _exp(P - q), _exp(uk - q)
    d = e1 * Bs + e2
    y = (e1 * A + e2 * vt) / d
    return (y.transpose(0, 1).to(v.dtype), a, b, p), (A, Bs, P, q, d, y, e2)


def wkv4_torch_backward(w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtypes: tuple[torch.dtype, ...],
                        saved: tuple[torch.Tensor, ...], gy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The backward (module docstring) from the forward's inputs ``w, k, v`` and its ``saved``.

    Args:
        w, k, v: the forward's inputs (``[D]``, ``[B, L, D]``, ``[B, L, D]``).
        dtypes: the dtypes of ``(w, u, k, v, aa, bb, pp)`` (those of the gradients).
        saved: the forward's ``(A, Bs, P, q, d, y, e2)``.
        gy: ``[B, L, D]`` gradient of ``y`` (the final state gets none: not differentiable).
    Returns:
        ``(g_w [D], g_u [D], g_k, g_v [B, L, D], g_aa, g_bb, g_pp [B, D])`` in ``dtypes``.
    """
    A, Bs, P, q, d, y, e2 = saved
    acc = y.dtype
    wf = w.to(acc)
    kt, vt = k.to(acc).transpose(0, 1), v.to(acc).transpose(0, 1)
    gy = gy.to(y.dtype).transpose(0, 1)
    c = gy / d  # gy_t / den_t scaled by e^{q_t}
    cy = c * y
    nq = -q
    O1, GA1, GB1, o, ga, gb = _wkv4_adjoint(wf, nq, c, cy)
    direct = c * e2  # gy e^{u+k} / den
    E = _exp(kt + O1)
    g_v = direct + E * GA1
    gk_direct = direct * (vt - y)
    g_k = gk_direct + E * (vt * GA1 + GB1)
    g_u = gk_direct.sum((0, 1))
    g_w = -(_exp(P + O1 - wf) * (A * GA1 + Bs * GB1)).sum((0, 1))
    # initial state: A_0 = e^{pp0} aa0
    s0 = _exp(P[0] + o)
    g_aa, g_bb = s0 * ga, s0 * gb
    g_pp = s0 * (A[0] * ga + Bs[0] * gb)
    dw, du, dk, dv, daa, dbb, dpp = dtypes
    return (g_w.to(dw), g_u.to(du), g_k.transpose(0, 1).to(dk), g_v.transpose(0, 1).to(dv),
            g_aa.to(daa), g_bb.to(dbb), g_pp.to(dpp))


class WKV4TorchFunction(torch.autograd.Function):
    """``(w [D], u [D], k [B,L,D], v [B,L,D], aa, bb, pp [B,D]) -> (y [B,L,D], aa, bb, pp)``:
    :func:`wkv4_torch_forward` and :func:`wkv4_torch_backward` with autograd's bookkeeping."""

    @staticmethod
    def forward(ctx, w, u, k, v, aa, bb, pp):
        (y, a, b, p), saved = wkv4_torch_forward(w, u, k, v, aa, bb, pp)
        ctx.save_for_backward(w, k, v, *saved)
        ctx.dtypes = (w.dtype, u.dtype, k.dtype, v.dtype, aa.dtype, bb.dtype, pp.dtype)
        ctx.mark_non_differentiable(a, b, p)
        return y, a, b, p

    @staticmethod
    def backward(ctx, gy, _ga, _gb, _gp):
        w, k, v, *saved = ctx.saved_tensors
        return wkv4_torch_backward(w, k, v, ctx.dtypes, tuple(saved), gy)


def wkv4_torch_loop(w, u, k, v, state=None):
    """Fast CPU WKV: same arguments and results as ``naive.wkv4_naive``; final state not differentiable."""
    if state is None:
        state = wkv4_init_state(k.shape[0], k.shape[2], k.device)
    y, aa, bb, pp = WKV4TorchFunction.apply(w, u, k, v, *state)
    return y, (aa, bb, pp)
