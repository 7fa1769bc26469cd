"""Model architectures a recipe can train: spikelm's spiking LM, or an ANN baseline from transformers
(a Llama, or the RWKV-4 that is the SpikeGPT default without its neurons).

``model.arch`` picks the family and ``model.flavour`` a size within it:

* ``spikelm``: :class:`spikelm.models.SpikeLMForCausalLM`, flavours ``spikelm.models.FLAVOURS``;
* ``llama``: transformers' own ``LlamaForCausalLM`` (pre-norm RMSNorm, RoPE, full causal softmax
  attention, SwiGLU MLP), flavours :data:`LLAMA_FLAVOURS`, each sized to match the parameter
  count of the spikelm flavour of the same data, so every spiking result has an ANN reference;
* ``rwkv``: transformers' own ``RwkvForCausalLM`` (RWKV-4, Peng et al. 2023), flavours
  :data:`RWKV_FLAVOURS`: the exact ANN twin of the SpikeGPT flavour of the same size (the same
  time-mix and channel-mix blocks, LayerNorms and untied head, without the LIF neurons and the
  spike embedding; ``rescale_every=0``, so eval mode computes what training computes), so the
  default's ANN comparison is like for like, and a source for ``spikelm convert``.
"""
from __future__ import annotations

ARCHS = ("spikelm", "llama", "rwkv")

LLAMA_FLAVOURS: dict[str, dict] = {
    # vs spikelm "debug" (D=32, 2 layers): 45,984 vs 46,656 parameters at vocab 300
    "llama-debug": dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2),
    # vs spikelm "shakespeare" (D=256, 4 layers): 3,672,320 vs 3,682,304 parameters at vocab 512.
    # Per layer: attention 4*256^2 = 262,144, SwiGLU 3*256*768 = 589,824, 2 RMSNorms 512
    # (SpikeGPT: time-mix 4*256^2 + channel-mix 2*256*1024 + 256^2 = 851,968, plus 2,816 of
    # LayerNorms and mixing/decay vectors); untied embedding and head 2*512*256 each.
    "llama-shakespeare": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=4),
}
"""Llama sizes by name (``LlamaConfig`` fields); vocabulary, context and token ids come from the data."""

RWKV_FLAVOURS: dict[str, dict] = {
    # the spikelm "debug" / "shakespeare" SpikeGPT sizes: the same parameter count (no neuron has parameters)
    "rwkv-debug": dict(hidden_size=32, attention_hidden_size=32, intermediate_size=128, num_hidden_layers=2),
    "rwkv-shakespeare": dict(hidden_size=256, attention_hidden_size=256, intermediate_size=1024, num_hidden_layers=4),
}
"""RWKV-4 sizes by name (``RwkvConfig`` fields, ``rescale_every=0``, untied head)."""

ANN_LAYOUT_KEYS = {
    "llama": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "attention_bias", "mlp_bias", "initializer_range", "tie_word_embeddings"),
    "rwkv": ("hidden_size", "intermediate_size", "num_hidden_layers", "tie_word_embeddings"),
}
"""Recipe layout keys each ANN arch accepts (fields of its transformers config)."""


def flavours(arch: str) -> dict[str, dict]:
    """The flavour table of ``arch``. Raises ``ValueError`` for an unknown arch (lists the known ones)."""
    if arch == "spikelm":
        from ..models import FLAVOURS

        return FLAVOURS
    if arch == "llama":
        return LLAMA_FLAVOURS
    if arch == "rwkv":
        return RWKV_FLAVOURS
    raise ValueError(f"model.arch {arch!r} is unknown; accepted: {', '.join(ARCHS)}")


def build_config(arch: str, flavour: str, overrides: dict, vocab_size: int, max_position_embeddings: int,
                 eos_token_id: int, bos_token_id: int, pad_token_id: int):
    """The HF config (``SpikeLMConfig`` or ``LlamaConfig``) of a flavour with ``overrides``.

    Args:
        arch, flavour: see the module docstring. overrides: fields of the arch's config class.
        vocab_size, max_position_embeddings (the context in tokens), eos/bos/pad_token_id:
            from the tokenizer and data.

    Raises:
        ValueError: unknown arch or flavour (lists the known ones), or ``overrides`` naming a
            field that comes from the data.
    """
    table = flavours(arch)
    if flavour not in table:
        raise ValueError(f"model.flavour {flavour!r} is not a {arch} flavour; known: {', '.join(table)}")
    fixed = dict(vocab_size=vocab_size, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                 pad_token_id=pad_token_id, max_position_embeddings=max_position_embeddings)
    clash = sorted(set(fixed) & set(overrides)) + (["context_length"] if "context_length" in overrides else [])
    if clash:
        raise ValueError(f"model.overrides may not set {clash}: they come from the tokenizer and data.block_size")
    try:
        if arch == "spikelm":
            from ..models import flavour_config

            return flavour_config(flavour, **{**overrides, **fixed})
        if arch == "rwkv":
            from transformers import RwkvConfig

            kw = {"tie_word_embeddings": False, "rescale_every": 0, **table[flavour], **overrides, **fixed}
            kw["context_length"] = kw.pop("max_position_embeddings")
            kw["attention_hidden_size"] = kw["hidden_size"]  # spikelm's time-mix has D x D projections
            return RwkvConfig(**kw)
        from transformers import LlamaConfig

        return LlamaConfig(**{"tie_word_embeddings": False, **table[flavour], **overrides, **fixed})
    except TypeError as e:  # a value of the wrong type in the model keys
        raise ValueError(f"model keys {overrides}: {e}") from None


def sequence_classification_class(config):
    """The ``*ForSequenceClassification`` class of a config (``data.format: classification``):
    ``SpikeLMForSequenceClassification`` or transformers' ``LlamaForSequenceClassification``.

    Raises:
        ValueError: another ``model_type`` (named, with the supported ones).
    """
    if config.model_type == "spikelm":
        from ..models.classification import SpikeLMForSequenceClassification

        return SpikeLMForSequenceClassification
    if config.model_type == "llama":
        from transformers import LlamaForSequenceClassification

        return LlamaForSequenceClassification
    raise ValueError(f"data.format classification supports spikelm and llama models, got model_type "
                     f"{config.model_type!r}")


def causal_lm_class(config):
    """The ``*ForCausalLM`` class of a config: ``SpikeLMForCausalLM`` or ``LlamaForCausalLM``.

    Raises:
        ValueError: any other ``model_type`` (the trainer supports spikelm and llama).
    """
    if config.model_type == "spikelm":
        from ..models import SpikeLMForCausalLM

        return SpikeLMForCausalLM
    if config.model_type == "llama":
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM
    if config.model_type == "rwkv":
        from transformers import RwkvForCausalLM

        return RwkvForCausalLM
    raise ValueError(f"model_type {config.model_type!r} cannot be trained here; supported: spikelm, llama, rwkv "
                     "(convert other Llama-family checkpoints with model.convert_layout)")


def flops_config(config):
    """A config view for :func:`spikelm.train.flops.model_flops_per_token`: a Llama's layers are
    full causal softmax attention, counted like ``swa`` with a window of the whole context."""
    if config.model_type == "spikelm":
        return config
    from types import SimpleNamespace

    from ..layers.channel_mix import RWKV4ChannelMix
    from ..layers.registry import kind_of
    from ..layers.swa import SlidingWindowAttention
    from ..layers.time_mix import RWKV4TimeMix

    n = config.num_hidden_layers
    if config.model_type == "rwkv":  # the SpikeGPT blocks' own count (WKV per channel)
        return SimpleNamespace(hidden_size=config.hidden_size, mixer_types=[kind_of(RWKV4TimeMix)] * n,
                               mlp_types=[kind_of(RWKV4ChannelMix)] * n)

    heads = config.num_attention_heads
    return SimpleNamespace(hidden_size=config.hidden_size, num_attention_heads=heads,
                           head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                           mixer_types=[kind_of(SlidingWindowAttention)] * config.num_hidden_layers,
                           sliding_window=None)


def describe(config) -> str:
    """One line for the log: layers, width and the neuron (spikelm) or ``ANN`` (llama)."""
    kind = f"neuron={config.neuron}" if config.model_type == "spikelm" else "ANN"
    return f"{config.model_type}, {config.num_hidden_layers} layers, D={config.hidden_size}, {kind}"


def load_config_file(path):
    """The HF config saved in a JSON file (``config.json`` or a run's ``model_config.json``),
    as its own class (``SpikeLMConfig``, ``LlamaConfig``, ...).

    Raises:
        ValueError: the file is not JSON, or holds no ``model_type``.
    """
    from transformers import AutoConfig

    from .. import models  # noqa: F401  (registers spikelm with AutoConfig)
    from ..hub.ids import read_json_file

    d = read_json_file(path)
    if "model_type" not in d:
        raise ValueError(f"{path} has no model_type; not a Hugging Face model config")
    return AutoConfig.for_model(d["model_type"]).__class__.from_json_file(str(path))
