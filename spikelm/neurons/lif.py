"""Multi-step LIF and PLIF neurons (SpikingJelly semantics), as torch modules."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..kernels.lif import check_surrogate, lif_multistep


class LIF(nn.Module):
    """Leaky integrate-and-fire neuron run over a time axis (SpikingJelly ``LIFNode``, step_mode 'm').

    Per step ``t`` (SpikingJelly, Fang et al. 2023), with ``H`` the Heaviside step (surrogate
    gradient in the backward pass): charge ``h_t = v_{t-1} + (x_t - (v_{t-1} - v_reset)) / tau``
    (``decay_input=False``: ``h_t = v_{t-1} - (v_{t-1} - v_reset) / tau + x_t``), fire
    ``s_t = H(h_t - v_th)``, reset ``v_t = h_t (1 - s_t) + v_reset s_t`` (hard) or
    ``v_t = h_t - v_th s_t`` (soft, ``v_reset=None``, charging with ``v_reset = 0``). The
    reference implementation is ``spikelm/kernels/lif/naive.py``.

    Args:
        tau: membrane time constant in steps (> 0); SpikeGPT uses 2.
        v_th: threshold ``v_th`` (> 0).
        v_reset: reset potential (hard reset), or None for a soft reset (subtract ``v_th``).
        decay_input: divide the input by ``tau`` too.
        detach_reset: no gradient through the reset.
        surrogate: ``"atan"`` (default alpha 2) or ``"sigmoid"`` (default alpha 4).
        alpha: surrogate sharpness; None for the surrogate's default.
        learn_v_th: a learnable threshold ``v_th = exp(log_v_th)`` (one float32 parameter per
            neuron module, shape ``[1]``, initialised to ``v_th``), trained through the
            surrogate gradient like PLIF's tau (learnable thresholds as in Wang et al. 2022,
            "LTMD: Learning Improvement of Spiking Neural Networks with Learnable Thresholding
            Neurons and Moderate Dropout", NeurIPS). It runs as the unit-threshold neuron on
            ``x / v_th``: with a reset to 0 (or a soft reset) the dynamics are linear in
            ``(x, v, v_th)``, so the spikes are exactly those of threshold ``v_th``; the
            membrane potential ``v`` (the recurrent state) is then kept in units of ``v_th``.
    Raises:
        ValueError: ``tau <= 0``, ``v_th <= 0``, ``v_reset >= v_th``, unknown surrogate, or
            ``learn_v_th`` with a reset potential other than 0 or None.
    """

    def __init__(self, tau: float = 2.0, v_th: float = 1.0, v_reset: float | None = 0.0, decay_input: bool = True,
                 detach_reset: bool = False, surrogate: str = "atan", alpha: float | None = None,
                 learn_v_th: bool = False):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"LIF tau must be > 0, got {tau}")
        if not v_th > 0:
            raise ValueError(f"LIF v_th must be > 0, got {v_th}")
        if v_reset is not None and v_reset >= v_th:
            raise ValueError(f"LIF v_reset ({v_reset}) must be below v_th ({v_th})")
        if learn_v_th and v_reset not in (None, 0.0):
            raise ValueError(f"a learnable LIF v_th needs a reset to 0 or a soft reset (v_reset 0 or None), got {v_reset}")
        alpha = alpha if alpha is not None else {"atan": 2.0, "sigmoid": 4.0}.get(surrogate, 1.0)
        check_surrogate(surrogate, alpha)
        self.v_th, self.v_reset, self.decay_input, self.detach_reset = v_th, v_reset, decay_input, detach_reset
        self.surrogate, self.alpha = surrogate, alpha
        self._tau = tau
        if learn_v_th:
            self.log_v_th = nn.Parameter(torch.tensor([math.log(v_th)]))
        else:
            self.register_parameter("log_v_th", None)

    @property
    def tau(self) -> float | torch.Tensor:
        """Membrane time constant (a float; a 0-dim tensor for PLIF)."""
        return self._tau

    def v_rest(self) -> float:
        """The resting potential a neuron starts from (``v_reset``, or 0 for a soft reset)."""
        return 0.0 if self.v_reset is None else float(self.v_reset)

    def threshold(self) -> float | torch.Tensor:
        """The threshold ``v_th``: the float, or ``exp(log_v_th)`` (a 0-dim tensor) when learnable."""
        return self.v_th if self.log_v_th is None else self.log_v_th.exp().reshape(())

    def scale_input(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The input and threshold the kernel runs with: ``(x, v_th)``, or ``(x / v_th, 1.0)``
        for a learnable threshold (``x`` any shape, same dtype out)."""
        if self.log_v_th is None:
            return x, self.v_th
        return x / self.threshold().to(x.dtype), 1.0

    def forward(self, x: torch.Tensor, v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [T, ...]`` (time first) and ``v`` (``x.shape[1:]``, or None = at rest) ->
        ``(spikes [T, ...] in x.dtype, v_T [...] float32)``."""
        x, v_th = self.scale_input(x)
        return lif_multistep(x, v, self.tau, v_th, self.v_reset, self.decay_input, self.detach_reset,
                             self.surrogate, self.alpha)

    def extra_repr(self) -> str:
        v_th = f"{float(self.threshold().detach()):.4g} (learnable)" if self.log_v_th is not None else self.v_th
        return (f"tau={float(self.tau):.3g}, v_th={v_th}, v_reset={self.v_reset}, decay_input={self.decay_input}, "
                f"detach_reset={self.detach_reset}, surrogate={self.surrogate}(alpha={self.alpha})")


class PLIF(LIF):
    """Parametric LIF (Fang et al. 2021, ICCV): LIF with a learnable ``tau = 1 / sigmoid(w)``.

    ``w`` (a one-element ``[1]`` float32 parameter; not 0-dim, which DeepSpeed's parameter
    broadcast cannot view as bytes) is initialised so that ``tau = init_tau``; a 0-dim ``w`` of
    an older state dict loads too.
    Raises:
        ValueError: ``init_tau <= 1`` (sigmoid < 1), or LIF's errors.
    """

    def __init__(self, init_tau: float = 2.0, **kwargs):
        if not init_tau > 1:
            raise ValueError(f"PLIF init_tau must be > 1 (tau = 1/sigmoid(w)), got {init_tau}")
        super().__init__(tau=init_tau, **kwargs)
        self.w = nn.Parameter(torch.tensor([-math.log(init_tau - 1.0)]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "w"
        if key in state_dict and state_dict[key].dim() == 0:  # saved before w was [1]
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def tau(self) -> torch.Tensor:
        """``1 / sigmoid(w)``, a 0-dim tensor (differentiable in ``w``)."""
        return (1.0 / torch.sigmoid(self.w)).reshape(())
