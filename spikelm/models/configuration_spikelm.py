"""``SpikeLMConfig``: the Hugging Face configuration of spikelm models."""
from __future__ import annotations

from transformers import PretrainedConfig

from ..layers.registry import MIXERS, MLPS

MIXER_TYPES = tuple(MIXERS)
"""Token mixers, the keys of :data:`spikelm.layers.registry.MIXERS`: ``rwkv4`` (SpikeGPT's RWKV-4
time-mix), ``ssa`` (Spikformer's spiking self-attention, causal), ``sdsa`` (the spike-driven
self-attention of the Spike-driven Transformer), ``gla`` and ``swa`` (SpikingBrain's gated
linear attention and sliding-window softmax attention)."""
MLP_TYPES = tuple(MLPS)
"""Channel mixers, the keys of :data:`spikelm.layers.registry.MLPS`: ``channel_mix`` (RWKV-4,
SpikeGPT), ``swiglu`` (SpikingBrain / Llama), ``spiking_mlp`` (Spikformer's MLP), ``moe``
(routed + shared SwiGLU experts, SpikingBrain-76B style)."""
NEURONS = ("lif", "plif", "none")
NORM_TYPES = ("layernorm", "rmsnorm")
SPIKING_NORMS = ("layernorm", "batchnorm")
ADAPTIVE_SPIKE_MODES = ("off", "ste", "expanded")
SPIKE_ENCODINGS = ("binary", "ternary", "bitwise")
GLA_FEATURE_MAPS = ("relu", "none")
ROPE_TYPES = ("default", "linear", "llama3")
"""RoPE frequency schemes of swa: the original (Su et al. 2021), position interpolation
(``"linear"``: frequencies divided by ``factor``, Chen et al. 2023) and Llama-3.1's scaling."""
_ROPE_PARAMS = {"default": (), "linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def _per_layer(name: str, value, default, n: int, accepted: tuple[str, ...]) -> list[str]:
    """A per-layer list from ``value`` (None -> ``default`` for every layer; a string -> that for every layer)."""
    if value is None:
        value = [default] * n
    elif isinstance(value, str):
        value = [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries but num_hidden_layers is {n}")
    bad = sorted({str(v) for v in value} - set(accepted))
    if bad:
        raise ValueError(f"unknown {name[:-1].replace('_', ' ')}(s) {bad} in {name}; accepted: {', '.join(accepted)}")
    return value


def _choice(name: str, value, accepted: tuple) -> None:
    if value not in accepted:
        raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(map(str, accepted))}")


class SpikeLMConfig(PretrainedConfig):
    """Configuration of a spiking language model (``model_type = "spikelm"``).

    A model is a stack of pre-norm residual blocks ``x = x + N1(Mixer(norm(x)))``,
    ``x = x + N2(MLP(norm(x)))``; each layer picks its token mixer, its MLP and its block-output
    neuron ``N1, N2``. One class thus serves SpikeGPT (``rwkv4`` + ``channel_mix`` + LIF),
    Spikformer-style (``ssa``/``sdsa`` + ``spiking_mlp`` + LIF) and SpikingBrain-style hybrids
    (``gla``/``swa`` interleaved + ``swiglu``, adaptive spiking on projection inputs, no LIF).

    Args:
        vocab_size: number of token ids.
        hidden_size: model width ``D``.
        num_hidden_layers: number of blocks.
        intermediate_size: MLP width (default ``4 * hidden_size``, as SpikeGPT).
        max_position_embeddings: the training context in tokens (transformers' name for it);
            prompts longer than this are rejected by generation helpers (the recurrent state
            itself has no length limit). Default 1024.
        context_length: the former name of ``max_position_embeddings``, still accepted (old
            ``config.json`` files) and readable as an alias (``attribute_map``).
        mixer_types: token mixer per layer, from :data:`MIXER_TYPES` (a single string means
            every layer); default all ``"rwkv4"``. (Not named ``layer_types``: transformers 5
            reserves that attribute for its own attention kinds.)
        mlp_types: MLP per layer, from :data:`MLP_TYPES`; default all ``"channel_mix"``.
        neuron: ``"lif"``, ``"plif"`` (learnable tau) or ``"none"`` (ANN ablation): the
            block-output neurons and, for ``ssa``/``sdsa``/``spiking_mlp``, their inner neurons.
        neuron_types: per-layer override of ``neuron`` for the block-output neurons.
        lif_tau, lif_v_th, lif_v_reset, lif_decay_input, lif_detach_reset: LIF parameters
            (SpikeGPT: tau 2, v_th 1, hard reset to 0). ``lif_v_reset=None`` is a soft reset.
        lif_v_th_learnable: every LIF/PLIF neuron learns its threshold (``exp(log_v_th)``,
            initialised to ``lif_v_th``; :class:`spikelm.neurons.LIF`); needs ``lif_v_reset`` 0 or None.
        surrogate, surrogate_alpha: surrogate gradient (``"atan"``, 2.0 in SpikeGPT).
        spike_embedding: binarise the token embedding with a Heaviside (+ surrogate).
        norm_type: block norms, ``"layernorm"`` (SpikeGPT) or ``"rmsnorm"`` (SpikingBrain).
        embed_norm: normalise the embedding before layer 0 (SpikeGPT's ``ln0``); None means
            "when layer 0 is rwkv4".
        num_attention_heads: heads of ssa/sdsa/gla/swa (default ``max(1, hidden_size // 64)``).
        num_key_value_heads: key/value heads of swa (grouped-query attention; must divide
            ``num_attention_heads``; default ``num_attention_heads``).
        head_dim: per-head width of gla/swa (default ``hidden_size // num_attention_heads``;
            ssa/sdsa always use ``hidden_size // num_attention_heads``).
        sliding_window: swa window ``W`` in tokens (a query sees itself and the W-1 before it);
            also the size of its ring-buffer KV cache. SpikingBrain-7B: 4096.
        rope_theta: RoPE base of swa.
        rope_type: RoPE frequency scheme of swa, from :data:`ROPE_TYPES` (default ``"default"``,
            the unscaled RoPE); ``"linear"`` and ``"llama3"`` are the transformers schemes of the
            same names.
        rope_params: the scheme's parameters, as in a transformers ``rope_parameters`` dict:
            ``{"factor"}`` for ``"linear"``; ``{"factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"}`` for ``"llama3"``; ignored for ``"default"``.
        attention_bias: biases on the q/k/v projections of gla and swa (Qwen2-style).
        attention_out_bias: a bias on the o projection of gla and swa (Llama/Qwen3 with
            ``attention_bias=True``); default False.
        attention_qk_norm: per-head RMSNorm (over ``head_dim``, eps ``layer_norm_eps``) of q and k
            right after their projections, before RoPE (swa) or the feature map (gla); Qwen3's
            ``q_norm`` / ``k_norm``. Default False.
        mlp_bias: biases on the gate/up/down projections of swiglu (Llama's ``mlp_bias``); default False.
        gla_num_key_value_heads: key/value heads of gla (grouped-query: each k/v head serves
            ``num_attention_heads / gla_num_key_value_heads`` consecutive query heads, and its
            ``k``, ``v`` and gate are repeated for them, so every query head still has its own
            state). None (default) means ``num_attention_heads`` (no sharing). Set by
            ``spikelm convert`` to the source's KV heads so GQA projections are reused as they are.
        gla_gate_low_rank_dim: rank of the gla gate ``g = logsigmoid(W_g2 W_g1 x) / normalizer``.
        gla_gate_logit_normalizer: the normalizer (16 in SpikingBrain / fla).
        gla_feature_map: ``"relu"`` (SpikingBrain) or ``"none"`` on q and k.
        gla_output_gate: multiply the normalised gla output by ``silu(W_og x)`` (fla's GLA).
        ssa_scale: scale of ``Q K^T V`` (Spikformer: 0.125).
        ssa_v_th: threshold of the attention-output LIF of ssa/sdsa (Spikformer: 0.5).
        spiking_norm: norm after the q/k/v/o projections of ssa/sdsa and in spiking_mlp:
            ``"layernorm"`` (default; causal and batch-independent) or ``"batchnorm"``
            (Spikformer; statistics over the real, unpadded tokens of the batch).
        adaptive_spike_mode: adaptive spiking on the inputs of the gla/swa/swiglu projections
            (SpikingBrain report, Eqs. 19-23): ``"off"``, ``"ste"`` (integer spikes with a
            straight-through gradient, training) or ``"expanded"`` (inference: counts expanded
            into spike trains and summed back; same output as ``"ste"``).
        adaptive_spike_k, adaptive_spike_max_count: threshold divisor and optional count clamp.
        adaptive_spike_steps, adaptive_spike_encoding: spike-train length and encoding
            (``"binary" | "ternary" | "bitwise"``) of the expanded mode.
        num_experts, num_experts_per_tok: routed experts ``E`` and top-k of ``moe`` layers
            (default 8 and 2).
        num_shared_experts: always-on shared experts ``S`` (default 0).
        moe_intermediate_size, shared_expert_intermediate_size: widths of a routed and of a
            shared expert (default ``intermediate_size``, and the routed width).
        shared_expert_gate: multiply the shared experts' sum by ``sigmoid(W x)`` (Qwen2-MoE).
        router_score_func: ``"softmax"`` (Mixtral, Qwen2-MoE) or ``"sigmoid"`` (DeepSeek-V3).
        norm_topk_prob: renormalise the top-k weights to sum 1 (default True, as Mixtral).
        moe_capacity_factor: training capacity per expert, ``ceil(factor * T * k / E)``
            assignments of a micro-batch (0, the default: dropless).
        router_aux_loss_coef, router_z_loss_coef: weights of the load-balancing loss and the
            router z-loss added to the training loss (defaults 0.01 and 0.001), averaged over
            the MoE layers. See :mod:`spikelm.layers.moe`.
        prefill_chunk_tokens: in evaluation mode (no labels), a sequence longer than this is run in
            chunks of this many tokens, each starting from the state the previous one left, so a
            long prompt's prefill costs time linear in its length and memory bounded by the chunk
            (SWA: by its window); the outputs equal a one-shot forward. 0: always one shot. Default 2048.
        layer_norm_eps, dropout, initializer_range: as usual.
        use_cache: return the recurrent state from ``forward`` by default.
    Raises:
        ValueError: an unknown value of any choice field (the message lists the accepted
            values), per-layer lists of the wrong length, bad sizes or head counts, what a
            layer kind's ``check_config`` rejects, or ``context_length`` and
            ``max_position_embeddings`` both given with different values.
    """

    model_type = "spikelm"
    attribute_map = {"context_length": "max_position_embeddings"}

    def __init__(self, vocab_size: int = 256, hidden_size: int = 512, num_hidden_layers: int = 12,
                 intermediate_size: int | None = None, max_position_embeddings: int | None = None,
                 context_length: int | None = None,
                 mixer_types: list[str] | str | None = None, mlp_types: list[str] | str | None = None,
                 neuron: str = "lif", neuron_types: list[str] | None = None, lif_tau: float = 2.0,
                 lif_v_th: float = 1.0, lif_v_reset: float | None = 0.0, lif_decay_input: bool = True,
                 lif_detach_reset: bool = False, lif_v_th_learnable: bool = False, surrogate: str = "atan",
                 surrogate_alpha: float = 2.0,
                 spike_embedding: bool = False, norm_type: str = "layernorm", embed_norm: bool | None = None,
                 num_attention_heads: int | None = None, num_key_value_heads: int | None = None,
                 head_dim: int | None = None, sliding_window: int = 4096, rope_theta: float = 10000.0,
                 rope_type: str = "default", rope_params: dict | None = None,
                 attention_bias: bool = False, attention_out_bias: bool = False, attention_qk_norm: bool = False,
                 mlp_bias: bool = False, gla_num_key_value_heads: int | None = None,
                 gla_gate_low_rank_dim: int = 16, gla_gate_logit_normalizer: float = 16.0,
                 gla_feature_map: str = "relu", gla_output_gate: bool = False, ssa_scale: float = 0.125,
                 ssa_v_th: float = 0.5, spiking_norm: str = "layernorm", adaptive_spike_mode: str = "off",
                 adaptive_spike_k: float = 3.0, adaptive_spike_max_count: int | None = None,
                 adaptive_spike_steps: int = 8, adaptive_spike_encoding: str = "bitwise",
                 num_experts: int = 8, num_experts_per_tok: int = 2, num_shared_experts: int = 0,
                 moe_intermediate_size: int | None = None, shared_expert_intermediate_size: int | None = None,
                 shared_expert_gate: bool = False, router_score_func: str = "softmax", norm_topk_prob: bool = True,
                 moe_capacity_factor: float = 0.0, router_aux_loss_coef: float = 0.01,
                 router_z_loss_coef: float = 0.001, prefill_chunk_tokens: int = 2048,
                 layer_norm_eps: float = 1e-5, dropout: float = 0.0,
                 initializer_range: float = 0.02, tie_word_embeddings: bool = False, use_cache: bool = True,
                 bos_token_id: int | None = None, eos_token_id: int | None = None, pad_token_id: int | None = None,
                 **kwargs):
        if vocab_size < 1 or hidden_size < 1 or num_hidden_layers < 1:
            raise ValueError(f"vocab_size, hidden_size and num_hidden_layers must be >= 1, got "
                             f"{vocab_size}, {hidden_size}, {num_hidden_layers}")
        n = num_hidden_layers
        if context_length is not None and max_position_embeddings not in (None, context_length):
            raise ValueError(f"context_length ({context_length}) is the old name of max_position_embeddings "
                             f"({max_position_embeddings}); give only max_position_embeddings")
        if max_position_embeddings is None:
            max_position_embeddings = 1024 if context_length is None else context_length
        mixer_types = _per_layer("mixer_types", mixer_types, "rwkv4", n, tuple(MIXERS))  # the registry as it is now
        mlp_types = _per_layer("mlp_types", mlp_types, "channel_mix", n, tuple(MLPS))
        _choice("neuron", neuron, NEURONS)
        neuron_types = _per_layer("neuron_types", neuron_types, neuron, n, NEURONS)
        _choice("norm_type", norm_type, NORM_TYPES)
        _choice("spiking_norm", spiking_norm, SPIKING_NORMS)
        _choice("adaptive_spike_mode", adaptive_spike_mode, ADAPTIVE_SPIKE_MODES)
        _choice("adaptive_spike_encoding", adaptive_spike_encoding, SPIKE_ENCODINGS)
        _choice("gla_feature_map", gla_feature_map, GLA_FEATURE_MAPS)
        heads = num_attention_heads if num_attention_heads is not None else max(1, hidden_size // 64)
        kv_heads = num_key_value_heads if num_key_value_heads is not None else heads
        if heads < 1 or kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads "
                             f"({kv_heads})")
        kinds = [MIXERS[k] for k in dict.fromkeys(mixer_types)] + [MLPS[k] for k in dict.fromkeys(mlp_types)]
        if head_dim is None:
            if any(c.uses_head_dim for c in kinds) and hidden_size % heads:
                raise ValueError(f"hidden_size ({hidden_size}) is not divisible by num_attention_heads ({heads}); "
                                 "set head_dim")
            head_dim = max(1, hidden_size // heads)
        if head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {head_dim}")
        _choice("rope_type", rope_type, ROPE_TYPES)
        rope_params = dict(rope_params or {})
        missing = [k for k in _ROPE_PARAMS[rope_type] if k not in rope_params]
        if missing:
            raise ValueError(f"rope_type {rope_type!r} needs rope_params {list(_ROPE_PARAMS[rope_type])}; "
                             f"missing {missing}")
        gla_kv = gla_num_key_value_heads if gla_num_key_value_heads is not None else heads
        if gla_kv < 1 or heads % gla_kv:
            raise ValueError(f"num_attention_heads ({heads}) must be a positive multiple of gla_num_key_value_heads "
                             f"({gla_kv})")
        if sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        if gla_gate_low_rank_dim < 1 or not gla_gate_logit_normalizer > 0:
            raise ValueError(f"gla_gate_low_rank_dim must be >= 1 and gla_gate_logit_normalizer > 0, got "
                             f"{gla_gate_low_rank_dim} and {gla_gate_logit_normalizer}")
        if lif_v_th_learnable and lif_v_reset not in (0.0, None):
            raise ValueError(f"lif_v_th_learnable needs lif_v_reset 0 or None (soft), got {lif_v_reset}")
        if not adaptive_spike_k > 0:
            raise ValueError(f"adaptive_spike_k must be > 0, got {adaptive_spike_k}")
        if adaptive_spike_max_count is not None and adaptive_spike_max_count < 1:
            raise ValueError(f"adaptive_spike_max_count must be >= 1 or None, got {adaptive_spike_max_count}")
        if adaptive_spike_steps < 1:
            raise ValueError(f"adaptive_spike_steps must be >= 1, got {adaptive_spike_steps}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.mixer_types = mixer_types
        self.mlp_types = mlp_types
        self.neuron = neuron
        self.neuron_types = neuron_types
        self.lif_tau, self.lif_v_th, self.lif_v_reset = lif_tau, lif_v_th, lif_v_reset
        self.lif_decay_input, self.lif_detach_reset = lif_decay_input, lif_detach_reset
        self.lif_v_th_learnable = lif_v_th_learnable
        self.surrogate, self.surrogate_alpha = surrogate, surrogate_alpha
        self.spike_embedding = spike_embedding
        self.norm_type = norm_type
        self.embed_norm = MIXERS[mixer_types[0]].embed_norm if embed_norm is None else bool(embed_norm)
        self.num_attention_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, head_dim
        self.sliding_window, self.rope_theta, self.attention_bias = sliding_window, rope_theta, attention_bias
        self.rope_type, self.rope_params = rope_type, rope_params
        self.attention_out_bias, self.attention_qk_norm = attention_out_bias, attention_qk_norm
        self.mlp_bias, self.gla_num_key_value_heads = mlp_bias, gla_kv
        self.gla_gate_low_rank_dim = gla_gate_low_rank_dim
        self.gla_gate_logit_normalizer = gla_gate_logit_normalizer
        self.gla_feature_map, self.gla_output_gate = gla_feature_map, gla_output_gate
        self.ssa_scale, self.ssa_v_th, self.spiking_norm = ssa_scale, ssa_v_th, spiking_norm
        self.adaptive_spike_mode, self.adaptive_spike_k = adaptive_spike_mode, adaptive_spike_k
        self.adaptive_spike_max_count = adaptive_spike_max_count
        self.adaptive_spike_steps, self.adaptive_spike_encoding = adaptive_spike_steps, adaptive_spike_encoding
        self.num_experts, self.num_experts_per_tok = num_experts, num_experts_per_tok
        self.num_shared_experts, self.shared_expert_gate = num_shared_experts, shared_expert_gate
        self.moe_intermediate_size = moe_intermediate_size
        self.shared_expert_intermediate_size = shared_expert_intermediate_size
        self.router_score_func, self.norm_topk_prob = router_score_func, norm_topk_prob
        self.moe_capacity_factor = moe_capacity_factor
        self.router_aux_loss_coef, self.router_z_loss_coef = router_aux_loss_coef, router_z_loss_coef
        if prefill_chunk_tokens < 0:
            raise ValueError(f"prefill_chunk_tokens must be >= 0 (0 = one shot), got {prefill_chunk_tokens}")
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.use_cache = use_cache
        self.layer_norm_eps, self.dropout, self.initializer_range = layer_norm_eps, dropout, initializer_range
        for kind in kinds:  # per-kind requirements (ssa/sdsa: D divisible by the heads; swa: even head_dim)
            kind.check_config(self)
        super().__init__(tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
