"""Convert a SpikingBrain-7B checkpoint (``model_type: gla_swa``, ``GLAswaForCausalLM``) into spikelm.

Source: BICLab/SpikingBrain-7B, ``hf_7B_model/`` (``configuration_gla_swa.py``,
``modeling_gla_swa.py``, ``gla_attention.py``, ``window_attention.py``; SpikingBrain technical
report, Pan et al. 2025, arXiv:2509.05276, Sec. 3). Their model is already the hybrid spikelm's
``gla``/``swa`` layers describe, so every tensor is copied; nothing is initialised anew:

* ``HybridBlock``: ``x = x + attn(attn_norm(x))``, ``x = x + GLU(mlp_norm(x))`` (RMSNorm eps
  ``norm_eps``, SwiGLU without biases) -> spikelm's pre-norm block (``ln1``, ``att``, ``ln2``,
  ``ffn``), ``model.embeddings`` / ``model.norm`` / ``lm_head`` -> ``model.embeddings`` /
  ``model.ln_out`` / ``head``;
* layers in ``attn_layers`` (default ``range(1, n, 2)``): ``FlashAttention``, softmax attention
  with RoPE (``rope_theta``), grouped-query heads, q/k/v biases and no o bias, calling
  ``flash_attn_func(causal=True, window_size=(W, 0))``: query ``i`` sees keys ``i - W ... i``,
  i.e. ``W + 1`` keys. spikelm's ``swa`` with ``sliding_window = W'`` shows a query itself and the
  ``W' - 1`` before it, so ``W' = W + 1``;
* the other layers: ``GatedLinearAttention`` (fla's GLA with ``feature_map = relu``, no short
  conv, no output gate): ``q = relu(W_q x + b_q)`` (H heads), ``k = relu(W_k x + b_k)``,
  ``v = W_v x + b_v`` (H_kv heads), ``gk = logsigmoid(W_g2 W_g1 x + b_g) / 16`` (H_kv heads),
  k, v, gk repeated per query head (``repeat_kv``, i.e. ``repeat_interleave``), the recurrence
  ``S_t = diag(exp gk_t) S_{t-1} + k_t^T v_t``, ``o_t = K^-1/2 q_t S_t``, ``RMSNorm_head``
  (``g_norm``, eps ``norm_eps``), ``W_o``. spikelm's ``gla`` has the same formula with
  ``gla_num_key_value_heads = H_kv`` for k and v, but its gate has one row block per *query*
  head, so ``gk_proj.1`` (``[H_kv K, r]`` and ``[H_kv K]``) is repeated per head group to
  ``[H K, r]`` / ``[H K]``: the same gate, exactly.

``spiking="off"`` reproduces their ANN forward (up to float rounding); ``"ste"`` / ``"expanded"``
add spikelm's adaptive spiking neuron (report Eqs. 19-23) on every projection input, as
:func:`spikelm.convert.convert_checkpoint` does. Streaming: one safetensors shard in memory at a
time (``safe_open``), one output shard per source shard.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from ..layers.mlp import SwiGLU
from ..layers.registry import kind_of
from ..models.configuration_spikelm import SpikeLMConfig
from .convert import (
    EXTRA_FILES,
    REPORT_NAME,
    TOKENIZER_FILES,
    _expected_shapes,
    _source_shards,
    _tokenizer_vocab,
    check_destination,
    finish_shards,
    output_shard_names,
    read_source,
    shard_tensors,
)
from .mapping import (
    LINEAR_MIXER,
    SOFTMAX_MIXER,
    SPIKING_MODES,
    ConversionError,
    source_rope,
)

MODEL_TYPE = "gla_swa"
"""``model_type`` of a SpikingBrain-7B ``config.json`` (architecture ``GLAswaForCausalLM``)."""
ATTN_MODES = ("chunk", "fused_recurrent", "fused_chunk")
"""Their ``attn_mode`` values: kernels of the same recurrence, all mapped to spikelm's gla."""
GATE_LOGIT_NORMALIZER = 16.0
"""``gate_logit_normalizer`` of their GLA (fixed: ``HybridBlock`` never passes another)."""
GATE_LOW_RANK_DIM = 16
"""``gate_low_rank_dim`` of their GLA (fixed the same way; checked against ``gk_proj`` shapes)."""

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_COMMON = [(re.compile(r"^attn_norm\.weight$"), "ln1.weight"), (re.compile(r"^mlp_norm\.weight$"), "ln2.weight"),
           (re.compile(r"^attn\.([qkv])_proj\.(weight|bias)$"), r"att.\1_proj.\2"),
           (re.compile(r"^attn\.o_proj\.weight$"), "att.o_proj.weight"),
           (re.compile(r"^mlp\.(gate|up|down)_proj\.weight$"), r"ffn.\1_proj.weight")]
_GLA_ONLY = [(re.compile(r"^attn\.g_norm\.weight$"), "att.g_norm.weight"),
             (re.compile(r"^attn\.gk_proj\.([01])\.weight$"), r"att.g_proj.\1.weight"),
             (re.compile(r"^attn\.gk_proj\.1\.bias$"), "att.g_proj.1.bias")]
_TOP = {"model.embeddings.weight": "model.embeddings.weight", "model.norm.weight": "model.ln_out.weight",
        "lm_head.weight": "head.weight"}


def is_spikingbrain(raw_config: dict) -> bool:
    """Whether a source ``config.json`` dict is SpikingBrain's layout (``model_type == "gla_swa"``)."""
    return raw_config.get("model_type") == MODEL_TYPE


def _check_supported(raw: dict) -> None:
    """Raise ``ConversionError`` naming the first ``config.json`` key spikelm's gla/swa cannot express."""
    def bad(key, why):
        raise ConversionError(f"config.json key {key!r} = {raw.get(key)!r}: {why}; spikelm's gla/swa layers "
                              "cannot express it, so this checkpoint cannot be converted")
    if raw.get("use_short_conv"):
        bad("use_short_conv", "GLA with short convolutions on q/k/v (spikelm's gla has none)")
    if raw.get("attn_mode", "chunk") not in ATTN_MODES:
        bad("attn_mode", f"unknown GLA mode (accepted: {', '.join(ATTN_MODES)})")
    if raw.get("feature_map", "relu") not in ("relu", None):
        bad("feature_map", "unknown GLA feature map (spikelm's gla: relu)")
    for key in ("use_output_gate", "use_output_gating"):
        if raw.get(key):
            bad(key, "GLA output gate (SpikingBrain's GLA has none; converting one is not supported)")
    for key in ("expand_k", "expand_v"):
        if raw.get(key, 1) != 1:
            bad(key, "key/value expansion (SpikingBrain's GLA uses head_dim = hidden_size / num_attention_heads)")
    if raw.get("gate_logit_normalizer", GATE_LOGIT_NORMALIZER) != GATE_LOGIT_NORMALIZER:
        bad("gate_logit_normalizer", f"SpikingBrain's GLA uses {GATE_LOGIT_NORMALIZER:g}")
    if raw.get("hidden_act", "swish") not in ("swish", "silu"):
        bad("hidden_act", "spikelm's SwiGLU uses silu (= swish)")
    D, H = raw["hidden_size"], raw["num_attention_heads"]
    if D % H:
        bad("num_attention_heads", f"does not divide hidden_size {D} (their head_dim = hidden_size / heads)")
    if raw.get("head_dim") not in (None, D // H):
        bad("head_dim", f"their layers use hidden_size / num_attention_heads = {D // H}")
    kv = raw.get("num_key_value_heads") or H
    if H % kv:
        bad("num_key_value_heads", f"must divide num_attention_heads {H}")
    n = raw["num_hidden_layers"]
    attn_layers = raw.get("attn_layers", list(range(1, n, 2)))
    if not all(isinstance(i, int) and 0 <= i < n for i in attn_layers):
        bad("attn_layers", f"entries must be layer indices 0..{n - 1}")


def spikingbrain_config(raw: dict, *, spiking: str = "ste", **overrides) -> SpikeLMConfig:
    """The ``SpikeLMConfig`` of a SpikingBrain-7B ``config.json`` dict.

    Sizes, ``norm_eps`` (-> ``layer_norm_eps``, block and GLA head norms), ``rope_theta`` (and any
    ``rope_scaling`` spikelm supports, via :func:`spikelm.convert.mapping.source_rope`), q/k/v
    biases, no o/MLP bias, GQA in both kinds (``num_key_value_heads``, ``gla_num_key_value_heads``),
    ``mixer_types`` (``swa`` on ``attn_layers``, else ``gla``), ``sliding_window = W + 1`` (see the
    module docstring), gate rank 16 / normalizer 16, relu feature map, RMSNorm, SwiGLU, no LIF,
    ``adaptive_spike_mode = spiking``, tied embeddings, special ids, context and ``dtype``.

    Raises:
        ConversionError: another ``model_type``, an unknown ``spiking`` mode, or a config this layout
            cannot express (``use_short_conv: true``, another feature map or ``attn_mode``, an output
            gate, ``expand_k``/``expand_v`` != 1, ``hidden_act``, head counts; names the key), an
            unsupported RoPE scaling.
    """
    if not is_spikingbrain(raw):
        raise ConversionError(f"not a SpikingBrain checkpoint: model_type {raw.get('model_type')!r}, expected "
                              f"{MODEL_TYPE!r} (GLAswaForCausalLM)")
    if spiking not in SPIKING_MODES:
        raise ConversionError(f"unknown spiking mode {spiking!r}; accepted: {', '.join(SPIKING_MODES)}")
    _check_supported(raw)
    n, D, H = raw["num_hidden_layers"], raw["hidden_size"], raw["num_attention_heads"]
    kv = raw.get("num_key_value_heads") or H
    attn_layers = set(raw.get("attn_layers", range(1, n, 2)))
    theta, rope_type, rope_params = source_rope(SimpleNamespace(**{"rope_theta": 1000000.0, **raw}))
    kw = {
        "vocab_size": raw["vocab_size"], "hidden_size": D, "num_hidden_layers": n,
        "intermediate_size": raw["intermediate_size"],
        "max_position_embeddings": int(raw.get("max_position_embeddings", 4096 * 32)),
        "mixer_types": [SOFTMAX_MIXER if i in attn_layers else LINEAR_MIXER for i in range(n)],
        "mlp_types": kind_of(SwiGLU), "neuron": "none", "norm_type": "rmsnorm", "embed_norm": False,
        "num_attention_heads": H, "num_key_value_heads": kv, "head_dim": D // H,
        "sliding_window": int(raw.get("sliding_window", 4096)) + 1,
        "rope_theta": theta, "rope_type": rope_type, "rope_params": rope_params,
        "attention_bias": True, "attention_out_bias": False, "attention_qk_norm": False, "mlp_bias": False,
        "gla_num_key_value_heads": kv, "gla_gate_low_rank_dim": GATE_LOW_RANK_DIM,
        "gla_gate_logit_normalizer": GATE_LOGIT_NORMALIZER, "gla_feature_map": "relu", "gla_output_gate": False,
        "adaptive_spike_mode": spiking, "layer_norm_eps": float(raw.get("norm_eps", 1e-6)),
        "initializer_range": float(raw.get("initializer_range", 0.02)),
        "tie_word_embeddings": bool(raw.get("tie_word_embeddings", False)),
        "bos_token_id": raw.get("bos_token_id"), "eos_token_id": raw.get("eos_token_id"),
        "pad_token_id": raw.get("pad_token_id"),
    }
    dtype = raw.get("dtype") or raw.get("torch_dtype")
    if dtype is not None:
        kw["dtype"] = str(dtype).removeprefix("torch.")
    kw.update(overrides)
    return SpikeLMConfig(**kw)


def map_spikingbrain_tensor(name: str, mixers: list[str], tied: bool) -> tuple[str | None, str]:
    """Where a SpikingBrain tensor goes: ``(spikelm name, note)`` or ``(None, why it is not used)``.

    Raises:
        ConversionError: an unknown tensor, one of a layer past ``num_hidden_layers``, or a GLA
            tensor (``gk_proj``, ``g_norm``) in a layer the config lists in ``attn_layers``.
    """
    if name == "lm_head.weight" and tied:
        return None, "tie_word_embeddings: the LM head is model.embeddings.weight (tied on load)"
    if name in _TOP:
        return _TOP[name], "copied"
    m = _LAYER.match(name)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        if i >= len(mixers):
            raise ConversionError(f"tensor {name!r} belongs to layer {i}, but num_hidden_layers is {len(mixers)}")
        if rest == "attn.rotary_emb.inv_freq":
            return None, "RoPE frequencies: recomputed from rope_theta"
        for pat, repl in _COMMON + _GLA_ONLY:
            if pat.match(rest):
                if (pat, repl) in _GLA_ONLY and mixers[i] != LINEAR_MIXER:
                    raise ConversionError(f"tensor {name!r} is a GLA tensor, but layer {i} is in attn_layers "
                                          "(sliding-window attention): config.json and weights disagree")
                return f"model.blocks.{i}.{pat.sub(repl, rest)}", f"copied into {mixers[i]} layer {i}"
    raise ConversionError(f"unexpected tensor {name!r} in the source checkpoint: the SpikingBrain (gla_swa) "
                          "converter does not know where it goes")


def repeat_gate_rows(t: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """Gate rows per KV head ``[H_kv * K, ...]`` -> per query head ``[H * K, ...]`` (same dtype):
    KV head ``j``'s block serves query heads ``j * G ... (j + 1) * G - 1``, ``G = H / H_kv``
    (their ``repeat_kv``: the layout spikelm's gla uses for k and v)."""
    if heads == kv_heads:
        return t
    blocks = t.reshape(kv_heads, t.shape[0] // kv_heads, *t.shape[1:])
    return blocks.repeat_interleave(heads // kv_heads, dim=0).reshape(-1, *t.shape[1:]).contiguous()


def _isolated_tokenizer_vocab(tok_dir: Path) -> tuple[int, list[str]]:
    """:func:`spikelm.convert.convert._tokenizer_vocab` on a temporary copy of the tokenizer files
    only: next to SpikingBrain's ``config.json`` (``auto_map`` to their remote code) transformers
    would otherwise ask whether to run that code. Raises ConversionError when there is none."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="spikelm-tok-") as d:
        for name in TOKENIZER_FILES:
            if (tok_dir / name).is_file():
                shutil.copy2(tok_dir / name, Path(d) / name)
        try:
            return _tokenizer_vocab(Path(d))
        except ConversionError as e:
            raise ConversionError(str(e).replace(d, str(tok_dir))) from None


def convert_spikingbrain(src_dir: str | Path, out_dir: str | Path, *, spiking: str = "ste",
                         tokenizer_dir: str | Path | None = None, config_overrides: dict | None = None) -> dict:
    """Convert a SpikingBrain-7B HF checkpoint directory (``model_type: gla_swa``) into a spikelm one.

    Reads ``src_dir/config.json`` (as a dict: their ``GLAswaConfig`` is remote code, never run),
    the safetensors weights (index + shards, or one ``model.safetensors``; one shard in memory at a
    time) and the tokenizer; writes ``out_dir`` atomically (``spikelm.train.rundir.atomic_dir``):
    ``config.json`` (:class:`~spikelm.SpikeLMConfig`), the weights (one output file per source
    shard, dtypes kept), the tokenizer files (byte for byte), ``generation_config.json`` when
    present, the remote code of :func:`spikelm.hub.write_remote_code`, and ``conversion_report.json``.

    Args:
        src_dir: the SpikingBrain checkpoint directory.
        out_dir: the new directory (must not exist).
        spiking: ``"off"`` (their ANN forward; ``report["exact"]``), ``"ste"`` or ``"expanded"``
            (adaptive spiking on every projection input).
        tokenizer_dir: where the tokenizer is (default ``src_dir``).
        config_overrides: extra ``SpikeLMConfig`` fields (e.g. ``adaptive_spike_k``).
    Returns:
        The report (also written as ``conversion_report.json``): ``tensors`` maps every source tensor
        to ``{"to": [names], "file", "shape", "dtype", "note"}``; ``mixer_types``, ``source_window``
        and ``window`` (= source + 1), ``spiking``, ``exact``, ``tokenizer``, ``output_files``.
    Raises:
        FileExistsError: ``out_dir`` exists (nothing is overwritten).
        FileNotFoundError: no ``config.json``; a shard named in the index is missing.
        ConversionError (a ValueError): see :func:`spikingbrain_config`; an unknown tensor, one whose
            shape differs from what the config implies (names both), a missing tensor, a tokenizer
            larger than the embedding, no tokenizer. On any error nothing is left at ``out_dir``.
    """
    from safetensors.torch import save_file

    from ..hub import write_remote_code
    from ..train.rundir import atomic_dir

    src, out, raw = read_source(src_dir, out_dir)
    config = spikingbrain_config(raw, spiking=spiking, **(config_overrides or {}))
    mixers, tied = list(config.mixer_types), config.tie_word_embeddings
    H, Hk = config.num_attention_heads, config.gla_num_key_value_heads
    weight_map = _source_shards(src)
    tok_src = Path(tokenizer_dir) if tokenizer_dir is not None else src
    vocab, tok_files = _isolated_tokenizer_vocab(tok_src)
    if vocab > config.vocab_size:
        raise ConversionError(f"vocabulary mismatch: the tokenizer has {vocab} tokens but the model's embedding "
                              f"(model.embeddings.weight, vocab_size) has only {config.vocab_size} rows")
    expected = _expected_shapes(config)
    files = sorted(set(weight_map.values()))
    out_names = output_shard_names(files)
    report_tensors: dict[str, dict] = {}
    written: dict[str, str] = {}
    total_size = 0
    with atomic_dir(out) as tmp:
        for file in files:
            tensors: dict[str, torch.Tensor] = {}
            for name, t, entry in shard_tensors(src, weight_map, file):
                dest, entry["note"] = map_spikingbrain_tensor(name, mixers, tied)
                report_tensors[name] = entry
                if dest is None:
                    continue
                if ".att.g_proj.1." in dest and H != Hk:
                    t = repeat_gate_rows(t, H, Hk)
                    entry["note"] += (f" (gate of {Hk} KV heads, rows repeated for the {H // Hk} query heads "
                                      f"of each group: {list(entry['shape'])} -> {list(t.shape)})")
                check_destination(name, dest, t.shape, entry["shape"], expected, written)
                tensors[dest] = t.contiguous()
                entry["to"] = [dest]
                written[dest] = out_names[file]
                if name == "model.embeddings.weight" and tied:
                    entry["to"].append("head.weight")
                    entry["note"] = "copied; head.weight is tied to it (tie_word_embeddings)"
            total_size += sum(t.numel() * t.element_size() for t in tensors.values())
            save_file(tensors, str(tmp / out_names[file]), metadata={"format": "pt"})
            del tensors
        finish_shards(tmp, expected, written, total_size, len(files))
        config.save_pretrained(tmp)
        write_remote_code(tmp)  # auto_map + self-contained modeling code: loads without spikelm installed
        for name in tok_files:
            shutil.copy2(tok_src / name, tmp / name)
        for name in EXTRA_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        report = {
            "source": str(src), "source_model_type": MODEL_TYPE,
            "source_architectures": list(raw.get("architectures") or []),
            "layout": "spikingbrain", "mixer_types": mixers, "spiking": spiking,
            "source_window": int(raw.get("sliding_window", 4096)), "window": config.sliding_window,
            "window_note": "flash_attn window_size=(W, 0) shows W + 1 keys; spikelm's sliding_window counts them",
            "exact": spiking == "off",
            "tokenizer": {"vocab": vocab, "files": tok_files, "embedding_rows": config.vocab_size},
            "output_files": sorted(set(written.values())),
            "tensors": dict(sorted(report_tensors.items())), "new_tensors": {},
        }
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report
