"""Typed model-layout keys of a recipe's ``model:`` section.

Every architectural field of :class:`spikelm.models.SpikeLMConfig` is a typed recipe key here
(``tests/train/test_recipe_schema.py`` checks the two lists stay equal), so jsonargparse rejects
an unknown or mistyped key (``model.mixer_types: [rwkv5]``) when the recipe is parsed, with the
accepted values. A key left at ``None`` keeps the value of the flavour (or, with
``model.init_from``, of the loaded config); a set key replaces it.

Two SpikeLMConfig fields use ``None`` as a value of their own; a recipe spells it as a word:
``lif_v_reset: soft`` (soft reset, SpikeLMConfig's ``lif_v_reset=None``) and
``adaptive_spike_max_count: none`` (no count clamp).

The vocabulary size, the context length and the special token ids are not keys: they come
from the tokenizer and ``data.block_size``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from ..layers.registry import MIXERS, MLPS
from ..models.configuration_spikelm import NEURONS

MixerType = Literal[tuple(MIXERS)]
"""Token mixers, the kinds of ``spikelm.layers.registry.MIXERS`` (rwkv4, ssa, sdsa, gla, swa)."""
MlpType = Literal[tuple(MLPS)]
"""MLPs, the kinds of ``spikelm.layers.registry.MLPS`` (channel_mix, swiglu, spiking_mlp, moe)."""
NeuronType = Literal[NEURONS]

_NONE_WORDS = {"lif_v_reset": "soft", "adaptive_spike_max_count": "none"}
"""Keys whose SpikeLMConfig value None is written as a word in a recipe."""


@dataclass
class ModelLayout:
    """The layout keys (see the module docstring); each None = the flavour's value.

    Attributes (SpikeLMConfig's meanings, shapes and defaults; see its docstring):
        hidden_size, num_hidden_layers, intermediate_size: widths and depth.
        mixer_types, mlp_types: per-layer lists (or one value for every layer) of token mixers
            and MLPs. neuron, neuron_types: block-output neurons.
        lif_tau, lif_v_th, lif_v_reset (``soft`` = soft reset), lif_decay_input,
            lif_detach_reset, lif_v_th_learnable, surrogate, surrogate_alpha: LIF neuron and
            surrogate gradient.
        adaptive_spike_mode, adaptive_spike_k, adaptive_spike_max_count (``none`` = no clamp),
            adaptive_spike_steps, adaptive_spike_encoding: SpikingBrain's adaptive spiking.
        the attention, GLA, SSA and norm fields: as in SpikeLMConfig.
        num_experts ... router_z_loss_coef: the ``moe`` MLP (routed/shared experts, router,
            capacity, auxiliary-loss weights; :mod:`spikelm.layers.moe`).
        prefill_chunk_tokens: tokens per chunk of a long prompt's prefill (0 = one shot).
    """

    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    intermediate_size: int | None = None
    mixer_types: list[MixerType] | MixerType | None = None
    mlp_types: list[MlpType] | MlpType | None = None
    neuron: NeuronType | None = None
    neuron_types: list[NeuronType] | None = None
    lif_tau: float | None = None
    lif_v_th: float | None = None
    lif_v_reset: float | Literal["soft"] | None = None
    lif_decay_input: bool | None = None
    lif_detach_reset: bool | None = None
    lif_v_th_learnable: bool | None = None
    surrogate: Literal["atan", "sigmoid"] | None = None
    surrogate_alpha: float | None = None
    spike_embedding: bool | None = None
    norm_type: Literal["layernorm", "rmsnorm"] | None = None
    embed_norm: bool | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    sliding_window: int | None = None
    rope_theta: float | None = None
    rope_type: Literal["default", "linear", "llama3"] | None = None
    rope_params: dict | None = None
    attention_bias: bool | None = None
    attention_out_bias: bool | None = None
    attention_qk_norm: bool | None = None
    mlp_bias: bool | None = None
    gla_num_key_value_heads: int | None = None
    gla_gate_low_rank_dim: int | None = None
    gla_gate_logit_normalizer: float | None = None
    gla_feature_map: Literal["relu", "none"] | None = None
    gla_output_gate: bool | None = None
    ssa_scale: float | None = None
    ssa_v_th: float | None = None
    spiking_norm: Literal["layernorm", "batchnorm"] | None = None
    adaptive_spike_mode: Literal["off", "ste", "expanded"] | None = None
    adaptive_spike_k: float | None = None
    adaptive_spike_max_count: int | Literal["none"] | None = None
    adaptive_spike_steps: int | None = None
    adaptive_spike_encoding: Literal["binary", "ternary", "bitwise"] | None = None
    num_experts: int | None = None
    num_experts_per_tok: int | None = None
    num_shared_experts: int | None = None
    moe_intermediate_size: int | None = None
    shared_expert_intermediate_size: int | None = None
    shared_expert_gate: bool | None = None
    router_score_func: Literal["softmax", "sigmoid"] | None = None
    norm_topk_prob: bool | None = None
    moe_capacity_factor: float | None = None
    router_aux_loss_coef: float | None = None
    router_z_loss_coef: float | None = None
    prefill_chunk_tokens: int | None = None
    layer_norm_eps: float | None = None
    dropout: float | None = None
    initializer_range: float | None = None
    tie_word_embeddings: bool | None = None

    def layout_keys(self) -> dict:
        """The set layout keys as config fields, ``{name: value}`` (``soft``/``none`` -> None)."""
        out = {}
        for f in fields(ModelLayout):
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = None if _NONE_WORDS.get(f.name) == v else v
        return out

    def check_layout(self, arch: str) -> None:
        """Raise ``ValueError`` for a set key that ``arch`` has no use for (lists the accepted ones)."""
        if arch != "spikelm":
            from .archs import ANN_LAYOUT_KEYS

            bad = sorted(set(self.layout_keys()) - set(ANN_LAYOUT_KEYS[arch]))
            if bad:
                raise ValueError(f"model.{bad[0]} is a spikelm layout key; model.arch {arch} accepts: "
                                 f"{', '.join(ANN_LAYOUT_KEYS[arch])}")
        for name in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "sliding_window"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"model.{name} must be >= 1, got {v}")


def layout_key_names() -> list[str]:
    """Names of the typed layout keys, in declaration order."""
    return [f.name for f in fields(ModelLayout)]
