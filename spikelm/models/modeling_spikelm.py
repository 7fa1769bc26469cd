"""Hugging Face model classes of spikelm: ``SpikeLMModel`` and ``SpikeLMForCausalLM``.

One set of weights, two execution modes that give the same numbers:

* parallel: a whole ``[B, L]`` sequence per call (training, prefill);
* recurrent: one (or a few) tokens per call with the state of the previous call passed as
  ``past_key_values`` (a :class:`SpikeLMCache`): O(1) memory and work per generated token.

Each layer's token mixer, MLP and output neurons come from the config (``mixer_types``,
``mlp_types``, ``neuron_types``): SpikeGPT (RWKV-4), Spikformer-style spiking self-attention,
SpikingBrain-style gated linear attention and sliding-window attention, in any layout.

Padding: positions where ``attention_mask == 0`` leave no trace in any state (token shifts
and LIF inputs are zeroed, WKV keys are set to ``PAD_KEY``, GLA keys and gates are zeroed,
SSA spikes are masked, SWA never caches pads and counts positions over real tokens only), so
a left-padded batch yields exactly what each prompt yields alone.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, MoeCausalLMOutputWithPast

from ..kernels.lif import heaviside
from ..layers import BlockState, SpikeLMBlock, SpikeLMLayer, make_norm, map_state
from .configuration_spikelm import SpikeLMConfig


class SpikeLMCache:
    """Recurrent state of every layer, used as ``past_key_values`` during generation.

    Attributes:
        layers: one :class:`~spikelm.layers.BlockState` ``(mixer, mlp, v_att, v_ffn)`` per layer
            (see docs/architecture.md, "State interface"): the mixer's and the MLP's own
            NamedTuple states (``cls.State`` of their registry classes) and the block-output
            neurons' membrane potentials ``[B, D]`` float32 (None in non-spiking layers); every
            tensor batch first. E.g. a SpikeGPT layer: ``BlockState(RWKV4State(shift, aa, bb,
            pp), ChannelMixState(shift), v_att, v_ffn)``, each ``[B, D]``; GLA:
            ``GLAState(S [B, H, K, V])``; SWA: ``SWAState(k_cache, v_cache [B, W, H_kv, Dh],
            pos [B])``, a ring buffer of ``sliding_window`` keys/values.
        seen_tokens: number of tokens (pads included) consumed so far.
    Unlike a KV cache its size does not grow with the sequence (SWA's is bounded by its window).
    """

    is_compileable = False

    def __init__(self, layers: list[BlockState], seen_tokens: int):
        self.layers = layers
        self.seen_tokens = seen_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far (pads included)."""
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search): every state tensor is indexed by ``beam_idx [B']`` (int64)."""
        self.layers = [map_state(lambda t: t.index_select(0, beam_idx.to(t.device)), layer) for layer in self.layers]

    def __len__(self) -> int:
        return len(self.layers)


class SpikeLMPreTrainedModel(PreTrainedModel):
    """Weight init, config class and capability flags shared by the spikelm HF classes."""

    config_class = SpikeLMConfig
    config: SpikeLMConfig
    base_model_prefix = "model"
    _input_embed_layer = "embeddings"  # get/set_input_embeddings (transformers' EmbeddingAccessMixin)
    _no_split_modules = ["SpikeLMBlock", "SpikeGPTBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The recurrent state is our own cache (a DynamicCache of attention layers does not fit).
        return False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        values = module.init_values() if isinstance(module, SpikeLMLayer) else {}  # e.g. RWKV-4's decay, mix
        if values:
            for name, value in values.items():
                param = getattr(module, name)
                init.copy_(param, value.to(device=param.device, dtype=param.dtype))
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif hasattr(module, "w") and isinstance(getattr(module, "w"), nn.Parameter):  # PLIF
            init.constant_(module.w, -math.log(self.config.lif_tau - 1.0))


class SpikeLMModel(SpikeLMPreTrainedModel):
    """Embedding, per-layer spiking blocks (``config.mixer_types`` / ``mlp_types``) and the final
    norm; returns hidden states ``[B, L, D]``."""

    def __init__(self, config: SpikeLMConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(SpikeLMBlock(config, i) for i in range(config.num_hidden_layers))
        self.ln_out = make_norm(config.norm_type, config.hidden_size, config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: SpikeLMCache | None = None, inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None, output_hidden_states: bool | None = None, **kwargs
                ) -> BaseModelOutputWithPast:
        """Args: ``input_ids [B, L]`` int64 (or ``inputs_embeds [B, L, D]``), ``attention_mask [B, L']``
        (its last L columns are used; 0 marks padding), ``past_key_values``: the
        :class:`SpikeLMCache` of a previous call (one ``BlockState`` per layer).
        Returns ``BaseModelOutputWithPast(last_hidden_state [B, L, D], past_key_values)`` (the new
        cache when ``use_cache``, else None).
        Raises ValueError when neither or both of ``input_ids`` and ``inputs_embeds`` are given."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.spike_embedding:
            x = heaviside(x, self.config.surrogate, self.config.surrogate_alpha)
        L = x.shape[1]
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, -L:]
            if bool(mask.all()):
                mask = None
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        states = past_key_values.layers if past_key_values is not None else [None] * len(self.blocks)
        new_states, all_hidden = [], []
        for block, state in zip(self.blocks, states):
            if output_hidden_states:
                all_hidden.append(x)
            if self.gradient_checkpointing and self.training:
                x, new_state = torch.utils.checkpoint.checkpoint(block, x, state, mask, use_reentrant=False)
            else:
                x, new_state = block(x, state, mask)
            new_states.append(new_state)
        x = self.ln_out(x)
        if output_hidden_states:
            all_hidden.append(x)
        cache = None
        if use_cache:
            seen = (past_key_values.seen_tokens if past_key_values is not None else 0) + L
            cache = SpikeLMCache(new_states, seen)
        return BaseModelOutputWithPast(last_hidden_state=x, past_key_values=cache,
                                       hidden_states=tuple(all_hidden) if output_hidden_states else None)

    def spike_rates(self) -> dict[str, float]:
        """Spike statistics of the last forward pass, by site name: ``"layers.{i}.{site}"`` for the
        ``site``s of ``blocks[i].spike_sites`` (each layer kind declares its own ``spike_sites``
        in :mod:`spikelm.layers.registry`), as floats:

        * ``"layers.{i}.att"`` / ``"layers.{i}.ffn"``: spike rate (mean of the spikes) of the
          block-output LIF neurons (absent for ``neuron="none"`` layers);
        * ``"layers.{i}.att.{q|k|v|attn}"``, ``"layers.{i}.ffn.hidden"``: rates of the inner LIF
          neurons of ssa/sdsa and spiking_mlp;
        * ``"layers.{i}.{att|ffn}.{in|o_in|down_in}.sparsity"``: sparsity (fraction of zero
          counts, over real tokens) of the adaptive spiking on projection inputs of gla, swa
          and swiglu (only when ``adaptive_spike_mode != "off"``). These are not rates: a
          consumer averaging rates should skip keys ending in ``.sparsity``.
        """
        return {k: float(r) for k, r in self.spike_rate_tensors().items()}

    def spike_rate_tensors(self) -> dict[str, torch.Tensor]:
        """:meth:`spike_rates` as detached 0-dim float32 tensors on the model's device, read without a
        host sync (the trainer sums them on the device between log steps)."""
        return {f"layers.{i}.{site}": r for i, b in enumerate(self.blocks) for site, r in b.spike_rates.items()}

    def moe_layers(self) -> dict[int, nn.Module]:
        """The MoE MLPs (``mlp_types[i] == "moe"``, :class:`spikelm.layers.moe.SpikingMoE`) by layer index."""
        return {i: b.ffn for i, b in enumerate(self.blocks) if b.mlp_type == "moe"}

    def take_moe_aux_loss(self) -> torch.Tensor | None:
        """The mean over the MoE layers of their last forward's auxiliary loss
        (``router_aux_loss_coef * load balance + router_z_loss_coef * z-loss``), a 0-dim float32
        tensor with gradient; None without MoE layers. Taking it clears it from the layers (they
        hold no autograd graph between calls, so the model stays copyable and frees it)."""
        losses = []
        for m in self.moe_layers().values():
            if m.aux_loss is not None:
                losses.append(m.aux_loss)
                m.aux_loss = None
        return torch.stack(losses).mean() if losses else None

    def moe_stat_tensors(self) -> dict[str, torch.Tensor]:
        """Routing statistics of the last forward pass, detached on the device, by name:
        ``"layers.{i}.{load_balance|z_loss|dropped}"`` (0-dim) and ``"layers.{i}.expert_load"``
        (``[E]``, the share of the kept assignments per expert). ``{}`` without MoE layers."""
        return {f"layers.{i}.{k}": v for i, m in self.moe_layers().items() for k, v in m.moe_stats.items()}


class SpikeLMForCausalLM(SpikeLMPreTrainedModel, GenerationMixin):
    """Spiking language model with an LM head (any layer layout of :class:`SpikeLMModel`); works with ``generate``,
    ``pipeline("text-generation")``, ``save_pretrained`` / ``from_pretrained``."""

    _tied_weights_keys = {"head.weight": "model.embeddings.weight"}

    def __init__(self, config: SpikeLMConfig):
        super().__init__(config)
        self.model = SpikeLMModel(config)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.head = new_embeddings

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: SpikeLMCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                output_hidden_states: bool | None = None, logits_to_keep: int | torch.Tensor = 0, **kwargs
                ) -> CausalLMOutputWithPast:
        """Like any HF causal LM: ``labels [B, L]`` are shifted inside (``labels = input_ids`` is
        right; -100 is ignored). Returns logits ``[B, L, V]`` (float32 when labels are given), the
        mean cross-entropy ``loss`` in nats per token, and the new state in ``past_key_values``.
        With MoE layers the result is a ``MoeCausalLMOutputWithPast`` whose ``aux_loss`` is
        :meth:`SpikeLMModel.take_moe_aux_loss`; in training mode ``loss`` includes it."""
        L = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        chunk = getattr(self.config, "prefill_chunk_tokens", 0)
        if (chunk and L > chunk and not self.training and labels is None and not output_hidden_states
                and isinstance(logits_to_keep, int)):
            return self._chunked_forward(input_ids, inputs_embeds, attention_mask, past_key_values, use_cache,
                                         logits_to_keep, chunk)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            h = h[:, logits_to_keep]
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        aux = self.model.take_moe_aux_loss()
        if aux is None:
            return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                          hidden_states=out.hidden_states)
        if loss is not None and self.training:
            loss = loss + aux.to(loss.dtype)
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux, logits=logits, past_key_values=out.past_key_values,
                                         hidden_states=out.hidden_states)

    def _chunked_forward(self, input_ids, inputs_embeds, attention_mask, past_key_values, use_cache,
                         logits_to_keep: int, chunk: int):
        """:meth:`forward` of a long input in chunks of ``chunk`` tokens, each from the state the
        previous one left (``config.prefill_chunk_tokens``): the same logits and state as one call,
        with activations of one chunk at a time. Only the logits asked for are computed
        (``logits_to_keep`` > 0: the last ones, e.g. 1 in ``generate``'s prefill)."""
        x = input_ids if input_ids is not None else inputs_embeds
        L = x.shape[1]
        first_kept = L - logits_to_keep if logits_to_keep > 0 else 0
        cache, logits, aux = past_key_values, [], []
        for s in range(0, L, chunk):
            e = min(s + chunk, L)
            am = None if attention_mask is None else attention_mask[:, :attention_mask.shape[1] - (L - e)]
            part = dict(input_ids=x[:, s:e]) if input_ids is not None else dict(inputs_embeds=x[:, s:e])
            out = self.model(**part, attention_mask=am, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            if e > first_kept:
                logits.append(self.head(out.last_hidden_state[:, max(first_kept - s, 0):]))
            step_aux = self.model.take_moe_aux_loss()
            if step_aux is not None:
                aux.append(step_aux)
        logits = torch.cat(logits, 1)
        cache = cache if (use_cache if use_cache is not None else self.config.use_cache) else None
        if not aux:
            return CausalLMOutputWithPast(logits=logits, past_key_values=cache)
        return MoeCausalLMOutputWithPast(aux_loss=torch.stack(aux).mean(), logits=logits, past_key_values=cache)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, past_key_values: SpikeLMCache | None = None,
                                      attention_mask: torch.Tensor | None = None, inputs_embeds=None,
                                      use_cache: bool | None = None, **kwargs) -> dict:
        """Feed only the tokens the state has not seen yet (the whole prompt first, then one token)."""
        if past_key_values is not None:
            input_ids = input_ids[:, past_key_values.seen_tokens:]
            inputs_embeds = None
        model_inputs = {"past_key_values": past_key_values, "attention_mask": attention_mask,
                        "use_cache": True if use_cache is None else use_cache}
        if inputs_embeds is not None:
            model_inputs["inputs_embeds"] = inputs_embeds
        else:
            model_inputs["input_ids"] = input_ids
        return model_inputs

    def _reorder_cache(self, past_key_values: SpikeLMCache, beam_idx: torch.LongTensor) -> SpikeLMCache:
        past_key_values.reorder_cache(beam_idx)
        return past_key_values
