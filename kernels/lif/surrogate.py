"""Surrogate gradients for the Heaviside spike function.

The forward pass of a spiking neuron emits ``H(x) = 1[x >= 0]`` (``x = h - v_th``); the
backward pass replaces the Dirac delta ``H'`` with the derivative of a smooth function
``g``. Formulas follow SpikingJelly (``spikingjelly.activation_based.surrogate``):

* ATan (Fang et al. 2021): ``g(x) = atan(pi/2 * alpha * x) / pi + 1/2``,
  ``g'(x) = alpha / (2 * (1 + (pi/2 * alpha * x)^2))``; default ``alpha = 2``.
* Sigmoid: ``g(x) = sigmoid(alpha * x)``, ``g'(x) = alpha * sigmoid(alpha x) * (1 - sigmoid(alpha x))``;
  default ``alpha = 4``.
"""
from __future__ import annotations

import math

import torch

SURROGATES = {"atan": 2.0, "sigmoid": 4.0}
"""Accepted surrogate names and their default ``alpha``."""


def check_surrogate(name: str, alpha: float) -> None:
    """Raise ``ValueError`` for an unknown surrogate name or a non-positive ``alpha``."""
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; accepted: {', '.join(SURROGATES)}")
    if not alpha > 0:
        raise ValueError(f"surrogate alpha must be > 0, got {alpha}")


def surrogate_grad(x: torch.Tensor, name: str = "atan", alpha: float = 2.0) -> torch.Tensor:
    """``g'(x)`` of the named surrogate, element-wise; same shape and dtype as ``x``."""
    if name == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)
    if name == "sigmoid":
        sg = torch.sigmoid(alpha * x)
        return alpha * sg * (1 - sg)
    raise ValueError(f"unknown surrogate {name!r}; accepted: {', '.join(SURROGATES)}")


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, name, alpha):
        ctx.save_for_backward(x)
        ctx.name, ctx.alpha = name, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(x, ctx.name, ctx.alpha), None, None


def heaviside(x: torch.Tensor, name: str = "atan", alpha: float = 2.0) -> torch.Tensor:
    """Spike function: forward ``1[x >= 0]`` (dtype of ``x``), backward the surrogate ``g'(x)``.

    Args:
        x: any shape, floating dtype; typically ``h - v_th``.
        name: ``"atan"`` or ``"sigmoid"``.
        alpha: surrogate sharpness (> 0).
    Raises:
        ValueError: unknown ``name`` or ``alpha <= 0``.
    """
    check_surrogate(name, alpha)
    return _Heaviside.apply(x, name, alpha)
