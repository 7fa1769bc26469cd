"""Model FLOPs per token and model FLOPs utilisation (MFU).

MFU follows PaLM (Chowdhery et al. 2022, appendix B): the FLOPs the model needs per trained
token, times tokens per second, over the hardware's peak. Recomputation (activation
checkpointing) and the spiking neurons' elementwise work are not counted, so MFU compares
runs and hardware, not kernels.

Per trained token (forward + backward = 3 x forward):

* every ``nn.Linear`` (all projections and the LM head): ``6 * in * out``; those of the routed
  experts of a ``moe`` MLP (``<moe>.experts.*``) times its ``active_fraction`` ``k / E``: only
  the experts a token is routed to count (the router and shared experts count in full);
* plus each layer's mixer and MLP term, ``flops_per_token(config, context)`` of its class in
  :mod:`spikelm.layers.registry`: softmax attention (``swa``; ``ssa``/``sdsa`` in their
  parallel form) ``12 * H * hd * T_ctx`` (PaLM's ``12 * L * H * Q * T`` per layer; ``T_ctx`` =
  the context, capped by the window); linear attention (``gla``) ``12 * H * K * V`` (the state
  update ``k v^T`` and the readout ``q S``, 2 FLOPs per multiply-add each, x3 for the
  backward); WKV-4, the MLPs' element-wise work and the neurons are ``O(D)`` per token, left
  out (0).
"""
from __future__ import annotations

import torch

from ..layers.registry import MIXERS, MLPS

PEAK_TFLOPS_16BIT = [
    ("H200", 989.4), ("GH200", 989.4), ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H100", 989.4),
    ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0), ("L4", 121.0), ("RTX 4090", 165.2), ("V100", 125.0),
]
"""Dense bf16/fp16 tensor-core peak (TFLOP/s, no sparsity) by device-name fragment, from the
vendors' data sheets; the first matching fragment wins (more specific names come first)."""


def model_flops_per_token(model: torch.nn.Module, config, context: int) -> float:
    """Training FLOPs per token (forward + backward) of a spikelm model, by the formula above.

    Args:
        model: the (possibly ZeRO-3-partitioned) model; Linear sizes are read from
            ``in_features``/``out_features``, so partitioned weights count in full.
        config: its ``SpikeLMConfig`` (``mixer_types``, ``mlp_types``, heads, ``head_dim``,
            ``sliding_window``), or any object with ``hidden_size`` and the fields it has (a
            config without ``mixer_types`` counts the Linear modules only).
        context: training sequence length ``T`` in tokens.

    Returns:
        FLOPs per token as a float (e.g. ~1.3e9 for the 216M SpikeGPT at T=1024).
    Raises:
        KeyError: a mixer or MLP kind missing from the registry.
    """
    flops = sum(6.0 * m.in_features * m.out_features * _active_fraction(name, fractions)
                for fractions in [_active_fractions(model)]
                for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    for table, kinds in ((MIXERS, getattr(config, "mixer_types", None)), (MLPS, getattr(config, "mlp_types", None))):
        for kind in kinds or []:
            flops += table[kind].flops_per_token(config, context)
    return flops


def _active_fractions(model: torch.nn.Module) -> dict[str, float]:
    """``{module name + ".": fraction}`` of the modules whose Linear layers run for only a share of
    the tokens: an MoE layer's routed experts (``<name>.experts.``) run for ``active_fraction``."""
    return {f"{name}.experts.": m.active_fraction for name, m in model.named_modules()
            if isinstance(getattr(type(m), "active_fraction", None), property)}


def _active_fraction(name: str, fractions: dict[str, float]) -> float:
    return next((f for prefix, f in fractions.items() if name.startswith(prefix)), 1.0)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one ``device`` at ``precision`` ("bf16"/"fp16"), or None when unknown
    (CPU, fp32, or a GPU missing from :data:`PEAK_TFLOPS_16BIT`)."""
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, tflops in PEAK_TFLOPS_16BIT:
        if fragment in name:
            return tflops * 1e12
    return None
