"""What spikelm knows about Hugging Face ANN causal LMs: per-architecture config translation and
tensor-name mapping (the Llama family: Llama, Qwen2/2.5, Qwen3, Mistral, and the MoE models
Mixtral and Qwen2-MoE).

All share one layout (pre-RMSNorm residual blocks, RoPE softmax attention with grouped-query
heads, SwiGLU MLP, final RMSNorm, optional tied LM head); they differ in biases, per-head q/k
norms, sliding windows and MoE MLPs (:mod:`spikelm.convert.moe`), described by :class:`ArchSpec`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..layers.gla import SpikingGLA
from ..layers.mlp import SwiGLU
from ..layers.registry import kind_of
from ..layers.swa import SlidingWindowAttention
from ..models.configuration_spikelm import SpikeLMConfig

SOFTMAX_MIXER = kind_of(SlidingWindowAttention)
"""Mixer kind of a layer kept as softmax attention (``"swa"``): exact with the source's window."""
LINEAR_MIXER = kind_of(SpikingGLA)
"""Mixer kind of a layer turned into gated linear attention (``"gla"``): new gate and head norm."""
CONVERTIBLE_MIXERS = (LINEAR_MIXER, SOFTMAX_MIXER)
"""The mixer kinds a softmax-attention layer can become (the entries of a layout list)."""
LAYOUTS = ("softmax", "hybrid", "linear")
"""Layer layouts of a conversion: ``softmax`` keeps every layer as (sliding-window) softmax
attention (:data:`SOFTMAX_MIXER`), ``hybrid`` is SpikingBrain-7B's (GLA on even layers 0, 2,
..., SWA on odd layers), ``linear`` turns every layer into GLA (:data:`LINEAR_MIXER`). A
comma-separated list of ``gla``/``swa`` (one per layer) is accepted too."""
SPIKING_MODES = ("off", "ste", "expanded")
"""``off``: no adaptive spiking neurons (an ANN; exact with layout ``softmax``); ``ste``:
adaptive spiking on every projection input with a straight-through gradient (training);
``expanded``: the same neuron with counts expanded into spike trains (inference; equal outputs)."""
HYBRID_DEFAULT_WINDOW = 4096
"""SWA window of SpikingBrain-7B's hybrid layers (capped at the source's context)."""


@dataclass(frozen=True)
class ArchSpec:
    """How one HF architecture maps onto ``SpikeLMConfig``.

    Attributes:
        model_type: the HF ``model_type``.
        qkv_bias: ``"always"`` (Qwen2 hard-codes q/k/v biases), ``"attention_bias"`` (the config
            flag decides), ``"qkv_bias"`` (Qwen2-MoE's ``qkv_bias`` flag) or ``"never"``.
        o_bias: ``"attention_bias"`` (Llama, Qwen3: the flag also biases o_proj) or ``"never"``.
        qk_norm: per-head q/k RMSNorm (Qwen3).
        mlp_bias: the config's ``mlp_bias`` flag applies (Llama).
        moe: mixture-of-experts MLPs (Mixtral, Qwen2-MoE; :func:`spikelm.convert.moe.source_moe_fields`).
    """

    model_type: str
    qkv_bias: str = "attention_bias"
    o_bias: str = "attention_bias"
    qk_norm: bool = False
    mlp_bias: bool = False
    moe: bool = False


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", mlp_bias=True),
    "qwen2": ArchSpec("qwen2", qkv_bias="always", o_bias="never"),
    "qwen3": ArchSpec("qwen3", qk_norm=True),
    "mistral": ArchSpec("mistral", qkv_bias="never", o_bias="never"),
    "mixtral": ArchSpec("mixtral", qkv_bias="never", o_bias="never", moe=True),
    "qwen2_moe": ArchSpec("qwen2_moe", qkv_bias="qkv_bias", o_bias="never", moe=True),
}
"""Supported source ``model_type`` -> its :class:`ArchSpec`."""

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ConversionError(ValueError):
    """A source checkpoint that cannot be converted as asked (the message says why and what to do)."""


def supported_message() -> str:
    return (f"supported model_type: {', '.join(ARCHITECTURES)} (architectures LlamaForCausalLM, "
            "Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2MoeForCausalLM)")


def arch_spec(model_type: str | None, architectures=None) -> ArchSpec:
    """The :class:`ArchSpec` of a source ``model_type``.

    Raises:
        ConversionError: an unsupported ``model_type`` (the message names the supported ones).
    """
    if model_type not in ARCHITECTURES:
        arch = f" ({', '.join(architectures)})" if architectures else ""
        raise ConversionError(f"cannot convert model_type {model_type!r}{arch}; {supported_message()}")
    return ARCHITECTURES[model_type]


def layer_mixers(layout: str, n_layers: int) -> list[str]:
    """Per-layer mixers of a layout: ``softmax`` -> all ``swa``; ``linear`` -> all ``gla``;
    ``hybrid`` -> ``gla`` on even layers and ``swa`` on odd ones (SpikingBrain-7B, report
    Sec. 3: inter-layer hybrid, sliding-window attention on every other layer); or an explicit
    comma-separated ``gla``/``swa`` list of ``n_layers`` entries.

    Raises:
        ConversionError: an unknown layout, or a list of the wrong length / with other entries.
    """
    if layout == "softmax":
        return [SOFTMAX_MIXER] * n_layers
    if layout == "linear":
        return [LINEAR_MIXER] * n_layers
    if layout == "hybrid":
        return [LINEAR_MIXER if i % 2 == 0 else SOFTMAX_MIXER for i in range(n_layers)]
    if "," in layout or layout in CONVERTIBLE_MIXERS:
        mixers = [m.strip() for m in layout.split(",")]
        bad = sorted(set(mixers) - set(CONVERTIBLE_MIXERS))
        if bad or len(mixers) != n_layers:
            raise ConversionError(f"layout list {layout!r} must hold {n_layers} entries (one per source layer), each "
                                  f"{' or '.join(map(repr, CONVERTIBLE_MIXERS))}"
                                  + (f"; unknown {bad}" if bad else f"; got {len(mixers)}"))
        return mixers
    raise ConversionError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}, or a comma-separated "
                          f"{'/'.join(CONVERTIBLE_MIXERS)} list with one entry per layer")


def _get(cfg, name, default=None):
    v = getattr(cfg, name, default)
    return default if v is None else v


def source_rope(cfg) -> tuple[float, str, dict]:
    """``(rope_theta, rope_type, params)`` of a source config (transformers 5 ``rope_parameters``,
    or the older ``rope_theta`` / ``rope_scaling`` attributes).

    Raises:
        ConversionError: a RoPE type spikelm's swa does not implement, or partial rotary.
    """
    rp = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rp, dict) and "rope_theta" not in rp and rp and all(isinstance(v, dict) for v in rp.values()):
        raise ConversionError("per-layer-type rope_parameters are not supported")
    rp = dict(rp) if isinstance(rp, dict) else {}
    legacy = getattr(cfg, "rope_scaling", None) if not rp else None
    if isinstance(legacy, dict):
        rp = {**legacy, **rp}
    theta = float(rp.get("rope_theta", _get(cfg, "rope_theta", 10000.0)))
    rope_type = rp.get("rope_type", rp.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConversionError(f"rope_type {rope_type!r} is not supported by spikelm's sliding-window attention; "
                              f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    prf = rp.get("partial_rotary_factor", _get(cfg, "partial_rotary_factor", 1.0))
    if prf != 1.0:
        raise ConversionError(f"partial_rotary_factor {prf} is not supported (RoPE over the whole head only)")
    keys = {"default": (), "linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}[rope_type]
    params = {k: rp[k] for k in keys if k in rp}
    missing = [k for k in keys if k not in params]
    if missing:
        raise ConversionError(f"rope_type {rope_type!r} without {missing} in the source config")
    return theta, rope_type, params


def source_windows(cfg) -> list[int | None]:
    """Per-layer attention window of the source: an int for sliding-window layers, None for full
    attention (Mistral, Mixtral: ``sliding_window`` on every layer when set; Qwen2/3, Qwen2-MoE:
    ``layer_types``)."""
    n = cfg.num_hidden_layers
    sw = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types:
        return [sw if t == "sliding_attention" else None for t in types]
    if cfg.model_type in ("mistral", "mixtral") and sw:
        return [int(sw)] * n
    return [None] * n


def gate_bias_for_memory(memory: float, normalizer: float) -> float:
    """Gate bias ``b`` with ``logsigmoid(b) / normalizer = -1 / memory``: with the gate's low-rank
    product initialised to zero the per-token decay is ``exp(-1 / memory)``, an exponential
    memory of ``memory`` tokens. ``memory = inf`` is not representable: use a large number."""
    return -math.log(math.expm1(normalizer / memory))


def convert_config(src_hf_config, *, layout: str = "hybrid", spiking: str = "ste", window: int | None = None,
                   gla_gate_low_rank_dim: int = 16, **overrides) -> SpikeLMConfig:
    """The ``SpikeLMConfig`` of a converted Llama-family model.

    Copies sizes (``vocab_size``, ``hidden_size``, layers, heads, KV heads, ``head_dim``,
    ``intermediate_size``), ``rms_norm_eps`` (as ``layer_norm_eps``), RoPE (theta, ``default``/
    ``linear``/``llama3`` scaling), biases (q/k/v, o, MLP), Qwen3's q/k norms, tied embeddings and
    special token ids and ``max_position_embeddings`` (the context). Adds RMSNorm,
    SwiGLU, no embedding norm, no LIF (``neuron="none"``), the layout's ``mixer_types`` and
    ``adaptive_spike_mode = spiking``; GLA layers keep the source's KV heads
    (``gla_num_key_value_heads``). Mixtral / Qwen2-MoE: ``moe`` MLPs where the source has MoE
    layers, with its experts, top-k and routing (:func:`spikelm.convert.moe.source_moe_fields`).

    Args:
        src_hf_config: a transformers ``PretrainedConfig`` (LlamaConfig, Qwen2Config,
            Qwen3Config, MistralConfig, MixtralConfig, Qwen2MoeConfig) or its dict.
        layout: see :data:`LAYOUTS`.
        spiking: see :data:`SPIKING_MODES`.
        window: SWA window in tokens. Default: layout ``softmax`` -> the source's own window
            (Mistral's ``sliding_window``) or its ``max_position_embeddings`` (exact attention);
            other layouts -> ``min(4096, that)`` (SpikingBrain-7B's window).
        gla_gate_low_rank_dim: rank of the new GLA gate.
        overrides: further ``SpikeLMConfig`` keyword arguments (applied last).
    Returns:
        ``SpikeLMConfig``.
    Raises:
        ConversionError: unsupported architecture (names the supported ones), activation, RoPE
            type, unknown layout/spiking mode, or a softmax layout over a source that mixes
            sliding-window and full layers without an explicit ``window``.
    """
    if isinstance(src_hf_config, dict):
        from transformers import AutoConfig

        d = dict(src_hf_config)
        arch_spec(d.get("model_type"), d.get("architectures"))
        src_hf_config = AutoConfig.for_model(d.pop("model_type"), **d)
    cfg = src_hf_config
    spec = arch_spec(getattr(cfg, "model_type", None), getattr(cfg, "architectures", None))
    if spiking not in SPIKING_MODES:
        raise ConversionError(f"unknown spiking mode {spiking!r}; accepted: {', '.join(SPIKING_MODES)}")
    act = _get(cfg, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConversionError(f"hidden_act {act!r} is not supported (spikelm's SwiGLU uses silu)")
    n = cfg.num_hidden_layers
    mixers = layer_mixers(layout, n)
    theta, rope_type, rope_params = source_rope(cfg)
    heads = cfg.num_attention_heads
    kv_heads = _get(cfg, "num_key_value_heads", heads)
    head_dim = _get(cfg, "head_dim", cfg.hidden_size // heads)
    max_pos = int(_get(cfg, "max_position_embeddings", 4096))
    windows = source_windows(cfg)
    if window is None:
        wins = {w for w in windows}
        if layout == "softmax" and len(wins) > 1:
            raise ConversionError(
                f"the source mixes sliding-window ({sorted(w for w in wins if w)}) and full-attention layers, but "
                "spikelm's swa has one window for all layers; pass window= (--window) explicitly (exact only for "
                "sequences no longer than the smallest window)")
        own = min((w for w in windows if w), default=max_pos)
        window = own if layout == "softmax" else min(HYBRID_DEFAULT_WINDOW, own)
    attention_bias = bool(_get(cfg, "attention_bias", False))
    kw = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": n,
        "intermediate_size": cfg.intermediate_size, "max_position_embeddings": max_pos, "mixer_types": mixers,
        "mlp_types": kind_of(SwiGLU),
        "neuron": "none", "norm_type": "rmsnorm", "embed_norm": False, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "sliding_window": int(window), "rope_theta": theta,
        "rope_type": rope_type, "rope_params": rope_params,
        "attention_bias": {"always": True, "never": False, "attention_bias": attention_bias,
                           "qkv_bias": bool(_get(cfg, "qkv_bias", True))}[spec.qkv_bias],
        "attention_out_bias": attention_bias if spec.o_bias == "attention_bias" else False,
        "attention_qk_norm": spec.qk_norm, "mlp_bias": bool(_get(cfg, "mlp_bias", False)) if spec.mlp_bias else False,
        "gla_num_key_value_heads": kv_heads, "gla_gate_low_rank_dim": gla_gate_low_rank_dim,
        "adaptive_spike_mode": spiking, "layer_norm_eps": float(_get(cfg, "rms_norm_eps", 1e-6)),
        "initializer_range": float(_get(cfg, "initializer_range", 0.02)),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "bos_token_id": getattr(cfg, "bos_token_id", None), "eos_token_id": getattr(cfg, "eos_token_id", None),
        "pad_token_id": getattr(cfg, "pad_token_id", None),
    }
    if spec.moe:
        from .moe import source_moe_fields

        kw.update(source_moe_fields(cfg))
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if dtype is not None:
        kw["dtype"] = str(dtype).removeprefix("torch.")
    kw.update(overrides)
    return SpikeLMConfig(**kw)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_MAP = [
    (re.compile(r"^input_layernorm\.weight$"), "ln1.weight"),
    (re.compile(r"^post_attention_layernorm\.weight$"), "ln2.weight"),
    (re.compile(r"^self_attn\.([qkvo])_proj\.(weight|bias)$"), r"att.\1_proj.\2"),
    (re.compile(r"^self_attn\.([qk])_norm\.weight$"), r"att.\1_norm.weight"),
    (re.compile(r"^mlp\.(gate|up|down)_proj\.(weight|bias)$"), r"ffn.\1_proj.\2"),
]
_TOP_MAP = {"model.embed_tokens.weight": "model.embeddings.weight", "model.norm.weight": "model.ln_out.weight",
            "lm_head.weight": "head.weight"}


def map_tensor(name: str, n_layers: int, tied: bool) -> tuple[str | None, str]:
    """Where a source tensor goes: ``(spikelm name, note)`` or ``(None, reason it is not used)``.

    Raises:
        ConversionError: a tensor the converter does not know (nothing is dropped silently), or a
            layer index beyond ``num_hidden_layers``.
    """
    if name.endswith("rotary_emb.inv_freq"):
        return None, "RoPE frequencies: recomputed from rope_theta / rope_type, not stored"
    if name == "lm_head.weight" and tied:
        return None, "tie_word_embeddings: the LM head is model.embeddings.weight (tied on load)"
    if name in _TOP_MAP:
        return _TOP_MAP[name], "copied"
    m = _LAYER.match(name)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        if i >= n_layers:
            raise ConversionError(f"tensor {name!r} belongs to layer {i}, but num_hidden_layers is {n_layers}")
        for pat, repl in _LAYER_MAP:
            if pat.match(rest):
                return f"model.blocks.{i}.{pat.sub(repl, rest)}", "copied"
    raise ConversionError(f"unexpected tensor {name!r} in the source checkpoint: spikelm convert does not know where "
                          "it goes (is this really a plain Llama/Qwen2/Qwen3/Mistral/Mixtral/Qwen2-MoE causal LM?)")
