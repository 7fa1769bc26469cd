"""Convert a Hugging Face transformers RWKV-4 checkpoint (``RwkvForCausalLM``, ``model_type: rwkv``)
onto spikelm's SpikeGPT block (Zhu et al. 2023: SpikeGPT *is* RWKV-4 with LIF neurons after each
sub-block and, optionally, a binarised embedding).

Tensor mapping (transformers ``models/rwkv/modeling_rwkv.py`` -> spikelm, ``{i}`` the layer)::

    rwkv.embeddings.weight                      -> model.embeddings.weight            [V, D]
    rwkv.blocks.0.pre_ln.*                      -> model.blocks.0.ln0.*               [D]
    rwkv.blocks.{i}.ln1|ln2.*                   -> model.blocks.{i}.ln1|ln2.*          [D]
    rwkv.blocks.{i}.attention.time_decay|time_first -> model.blocks.{i}.att.*         [D]
    rwkv.blocks.{i}.attention.time_mix_key|value|receptance
                                                -> ...att.time_mix_k|v|r   [1, 1, D] -> [D]
    rwkv.blocks.{i}.attention.key|value|receptance|output.weight -> ...att.*          [D, D]
    rwkv.blocks.{i}.feed_forward.time_mix_key|receptance -> ...ffn.time_mix_k|r  [1, 1, D] -> [D]
    rwkv.blocks.{i}.feed_forward.key|receptance|value.weight -> ...ffn.*  [F, D], [D, D], [D, F]
    rwkv.ln_out.*                               -> model.ln_out.*                     [D]
    head.weight                                 -> head.weight (tied to the embedding when
                                                   ``tie_word_embeddings`` and absent)

Conventions checked against transformers: ``time_decay`` is stored raw and used as
``w = -exp(time_decay)`` (``rwkv_linear_attention_cpu`` and the CUDA wrapper), which is spikelm's
``wkv4(exp(time_decay), time_first, k, v)`` (``spikelm/layers/time_mix.py``: decay ``pp - w``),
so ``time_decay`` and ``time_first`` are copied unchanged; the token shift of the first token is
zero in both; the block is ``x = x + att(ln1(x))``, ``x = x + ffn(ln2(x))`` with ``pre_ln``
first in block 0, LayerNorm eps ``layer_norm_epsilon``.

``rescale_every``: in eval mode transformers' ``RwkvModel._rescale_layers`` divides
``attention.output`` / ``feed_forward.value`` of block ``b`` by ``2 ** (b // rescale_every)`` *in
place* and halves the residual every ``rescale_every`` blocks (equal logits, since ``ln_out`` is
scale invariant). The weights here are read from the safetensors files with ``safe_open``, i.e.
unrescaled as trained, and spikelm does no rescaling. (A checkpoint saved by ``save_pretrained``
from a model that had run in eval mode would hold rescaled weights; it cannot be told apart.)

``spiking``: ``"off"`` -> ``neuron="none"``, ``spike_embedding=False``: exactly the source RWKV.
``"lif"`` (default) -> SpikeGPT's LIF neurons (tau 2, v_th 1, hard reset 0) after each
sub-block; the embedding stays real-valued unless ``spike_embedding=True``, because an RWKV was
trained on real embeddings and a Heaviside of them throws away most of their information (the
LIF neurons alone already change the function; fine-tune either way).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .mapping import ConversionError
from .spikegpt import (
    SPIKING_CHOICES,
    check_against_model,
    config_summary,
    sha256_file,
    write_converted,
)

_ATT = {"time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v", "time_mix_receptance": "time_mix_r",
        "time_decay": "time_decay", "time_first": "time_first", "key.weight": "key.weight",
        "value.weight": "value.weight", "receptance.weight": "receptance.weight", "output.weight": "output.weight"}
_FFN = {"time_mix_key": "time_mix_k", "time_mix_receptance": "time_mix_r", "key.weight": "key.weight",
        "receptance.weight": "receptance.weight", "value.weight": "value.weight"}
_BLOCK_RE = re.compile(r"rwkv\.blocks\.(\d+)\.(.+)")


def map_rwkv_name(name: str) -> str | None:
    """spikelm name of a transformers RWKV tensor name, or None when it has no home."""
    top = {"rwkv.embeddings.weight": "model.embeddings.weight", "rwkv.ln_out.weight": "model.ln_out.weight",
           "rwkv.ln_out.bias": "model.ln_out.bias", "head.weight": "head.weight"}
    if name in top:
        return top[name]
    m = _BLOCK_RE.fullmatch(name)
    if not m:
        return None
    i, rest = m.group(1), m.group(2)
    p = f"model.blocks.{i}."
    if rest in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"):
        return p + rest
    if rest in ("pre_ln.weight", "pre_ln.bias") and i == "0":
        return p + "ln0." + rest.split(".")[1]
    for src, (short, table) in {"attention.": ("att.", _ATT), "feed_forward.": ("ffn.", _FFN)}.items():
        if rest.startswith(src) and rest[len(src):] in table:
            return p + short + table[rest[len(src):]]
    return None


def rwkv_config(raw: dict, *, spiking: str = "lif", spike_embedding: bool = False):
    """The :class:`~spikelm.SpikeLMConfig` of a transformers RWKV ``config.json`` (a dict).

    ``intermediate_size: null`` means ``4 * hidden_size``; ``context_length`` ->
    ``max_position_embeddings``; ``layer_norm_epsilon`` -> ``layer_norm_eps``; token ids and
    ``tie_word_embeddings`` are kept.
    Raises:
        ConversionError: not ``model_type: rwkv``; ``attention_hidden_size != hidden_size``
            (spikelm's time-mix is square); an unknown ``spiking``.
    """
    from ..models.configuration_spikelm import SpikeLMConfig

    if raw.get("model_type") != "rwkv":
        raise ConversionError(f"not a transformers RWKV checkpoint: model_type is {raw.get('model_type')!r}, "
                              "expected 'rwkv'")
    if spiking not in SPIKING_CHOICES:
        raise ConversionError(f"unknown spiking {spiking!r}; accepted: {', '.join(SPIKING_CHOICES)}")
    D = int(raw["hidden_size"])
    att = raw.get("attention_hidden_size")
    if att is not None and int(att) != D:
        raise ConversionError(f"attention_hidden_size ({att}) != hidden_size ({D}): spikelm's RWKV-4 time-mix "
                              "(SpikeGPT's) has a square attention; this checkpoint cannot be mapped onto it")
    lif = spiking == "lif"
    return SpikeLMConfig(
        vocab_size=int(raw["vocab_size"]), hidden_size=D, num_hidden_layers=int(raw["num_hidden_layers"]),
        intermediate_size=int(raw.get("intermediate_size") or 4 * D),
        max_position_embeddings=int(raw.get("context_length") or 1024), mixer_types="rwkv4",
        mlp_types="channel_mix", neuron="lif" if lif else "none", lif_tau=2.0, lif_v_th=1.0, lif_v_reset=0.0,
        lif_decay_input=True, surrogate="atan", surrogate_alpha=2.0, spike_embedding=bool(lif and spike_embedding),
        norm_type="layernorm", embed_norm=True, layer_norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)), bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"), pad_token_id=raw.get("pad_token_id"))


def convert_rwkv(src_dir: str | Path, out_dir: str | Path, *, spiking: str = "lif", spike_embedding: bool = False,
                 tokenizer_dir: str | Path | None = None) -> dict:
    """Convert a transformers ``RwkvForCausalLM`` directory into a spikelm (SpikeGPT-layout) directory.

    Args:
        src_dir: the HF directory: ``config.json`` with ``model_type: rwkv`` and safetensors weights
            (``model.safetensors`` or an index with shards; read with ``safe_open``, any float dtype,
            kept as stored).
        out_dir: the new directory (must not exist); written atomically, one ``model.safetensors``.
        spiking: ``"lif"`` (SpikeGPT's LIF neurons, default) or ``"off"`` (no neurons, no spike
            embedding: the source's logits up to float rounding).
        spike_embedding: binarise the embedding (only with ``spiking="lif"``; default False, see the
            module docstring).
        tokenizer_dir: where the tokenizer files are (default ``src_dir``); copied byte for byte.
    Returns:
        The report (also ``conversion_report.json``): ``source``, ``format: "rwkv"``, ``exact``,
        ``tensors`` (every source name -> ``{"to", "file", "shape", "dtype", "note"}``),
        ``config``, ``tokenizer``, ``semantics``.
    Raises:
        FileExistsError: ``out_dir`` exists. FileNotFoundError: no ``config.json``, a missing shard.
        ConversionError (a ValueError): not ``model_type: rwkv``; ``attention_hidden_size !=
            hidden_size``; no safetensors weights; unknown, missing or mis-shaped tensors (named);
            a tokenizer larger than the embedding. Nothing is written then.
    """
    from safetensors import safe_open

    from .convert import _source_shards, _tokenizer_vocab, read_source

    src, out, raw = read_source(src_dir, out_dir)
    config = rwkv_config(raw, spiking=spiking, spike_embedding=spike_embedding)
    weight_map = _source_shards(src)
    unknown = sorted(k for k in weight_map if map_rwkv_name(k) is None)
    if unknown:
        raise ConversionError(f"{len(unknown)} tensor(s) of {src} have no home in spikelm's SpikeGPT block: "
                              f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    tensors, source_of, report_tensors = {}, {}, {}
    for file in sorted(set(weight_map.values())):
        with safe_open(src / file, framework="pt") as f:
            present = set(f.keys())
            for name in sorted(k for k, v in weight_map.items() if v == file):
                if name not in present:
                    raise ConversionError(f"tensor {name} is listed for {file} but that file does not hold it")
                t, dest = f.get_tensor(name), map_rwkv_name(name)
                note = "copied"
                if "time_mix_" in name and t.dim() == 3 and t.shape[:2] == (1, 1):
                    t, note = t.reshape(-1), "copied, [1, 1, D] -> [D]"
                if name.endswith(("attention.output.weight", "feed_forward.value.weight")) and raw.get("rescale_every"):
                    note += " (as stored: not rescaled; spikelm does no rescale_every)"
                tensors[dest], source_of[dest] = t, name
                report_tensors[name] = {"to": [dest], "file": file, "shape": list(t.shape) if "time_mix_" not in name
                                        else [1, 1, t.numel()], "dtype": str(t.dtype).removeprefix("torch."),
                                        "note": note}
    if config.tie_word_embeddings:
        if "head.weight" in tensors and not torch.equal(tensors["head.weight"], tensors["model.embeddings.weight"]):
            raise ConversionError("tie_word_embeddings is set but head.weight differs from rwkv.embeddings.weight")
        tensors.pop("head.weight", None)
        report_tensors["rwkv.embeddings.weight"]["to"].append("head.weight")
    check_against_model(config, tensors, source_of)
    tok_src = Path(tokenizer_dir) if tokenizer_dir is not None else src
    vocab, tok_files = _tokenizer_vocab(tok_src)
    if vocab > config.vocab_size:
        raise ConversionError(f"vocabulary mismatch: the tokenizer has {vocab} tokens but the model's embedding "
                              f"(rwkv.embeddings.weight) has only {config.vocab_size} rows")
    extra = [src / "generation_config.json"] if (src / "generation_config.json").is_file() else []
    report = {
        "source": {"path": str(src), "model_type": "rwkv",
                   "files": {f: sha256_file(src / f) for f in sorted(set(weight_map.values()))}},
        "format": "rwkv", "spiking": spiking, "spike_embedding": config.spike_embedding,
        "exact": spiking == "off",
        "semantics": ("transformers RwkvForCausalLM (RWKV-4): time_decay used as w = -exp(time_decay), copied; "
                      "weights as stored (no rescale_every). spiking='lif' adds SpikeGPT's LIF neurons (tau 2, "
                      "v_th 1, hard reset 0, decay_input) after each sub-block; 'off' reproduces the source."),
        "rescale_every": raw.get("rescale_every"), "config": config_summary(config),
        "tokenizer": {"vocab": vocab, "files": tok_files, "embedding_rows": config.vocab_size},
        "tensors": report_tensors,
    }
    write_converted(out, config, tensors, None, report, copy_files=[tok_src / f for f in tok_files] + extra)
    return report


def is_rwkv_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory whose ``config.json`` says ``model_type: rwkv`` (for dispatch)."""
    import json

    cfg = Path(path) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "rwkv"
    except (OSError, ValueError):
        return False


__all__ = ["convert_rwkv", "is_rwkv_dir", "map_rwkv_name", "rwkv_config"]
