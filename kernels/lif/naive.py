"""Pure-torch multi-step LIF, written step by step with autograd: the statement of the formula.

SpikingJelly's LIF (``spikingjelly.activation_based.neuron.LIFNode``), for t = 0..T-1:

* charge, ``decay_input=True``:  ``h_t = v_{t-1} + (x_t - (v_{t-1} - v_reset)) / tau``
* charge, ``decay_input=False``: ``h_t = v_{t-1} - (v_{t-1} - v_reset) / tau + x_t``
* fire: ``s_t = H(h_t - v_th)`` with a surrogate gradient
* hard reset (``v_reset`` a number): ``v_t = h_t * (1 - s_t) + v_reset * s_t``
* soft reset (``v_reset=None``): ``v_t = h_t - v_th * s_t``; the charge then uses 0 for ``v_reset``.

``detach_reset=True`` stops the gradient through ``s_t`` inside the reset.
This file is slow (autograd graph of T steps) and is used by tests as the reference.
"""
from __future__ import annotations

import torch

from .surrogate import heaviside


def lif_naive(x: torch.Tensor, v0: torch.Tensor | None = None, tau: float | torch.Tensor = 2.0, v_th: float = 1.0,
              v_reset: float | None = 0.0, decay_input: bool = True, detach_reset: bool = False,
              surrogate: str = "atan", alpha: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-step LIF over the leading (time) axis (formula: module docstring; SpikingJelly ``LIFNode``).

    Args:
        x: ``[T, ...]`` input current per step, any float dtype (the math runs in it).
        v0: ``x.shape[1:]`` initial membrane potential, or None for ``v_reset`` (0 for soft reset).
        tau: membrane time constant (> 1 for a leak), a float or a 0-dim tensor (PLIF).
        v_th, v_reset, decay_input, detach_reset, surrogate, alpha: as in
            :func:`spikelm.kernels.lif.lif_multistep`.
    Returns:
        ``(spikes [T, ...] in x.dtype, v_T x.shape[1:] in x.dtype)``, differentiable with
        autograd (surrogate gradient) in ``x``, ``v0`` and a tensor ``tau``.
    Raises:
        ValueError: unknown surrogate or ``alpha <= 0`` (no other checks: this is the reference).
    """
    vr = 0.0 if v_reset is None else v_reset
    v = torch.full_like(x[0], vr) if v0 is None else v0.to(x.dtype)
    out = []
    for t in range(x.shape[0]):
        if decay_input:
            h = v + (x[t] - (v - vr)) / tau
        else:
            h = v - (v - vr) / tau + x[t]
        s = heaviside(h - v_th, surrogate, alpha)
        sr = s.detach() if detach_reset else s
        v = h * (1 - sr) + vr * sr if v_reset is not None else h - v_th * sr
        out.append(s)
    return torch.stack(out), v
