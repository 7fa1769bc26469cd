"""Convert a Hugging Face Llama-family causal LM checkpoint into a spikelm checkpoint.

What is reused, what is new (SpikingBrain technical report, Pan et al. 2025, arXiv:2509.05276,
Sec. 3-4: the 7B model is converted from Qwen2.5-7B by keeping the embeddings, norms, MLP and
the attention projections and re-purposing softmax attention as linear / sliding-window
attention; GLA from Yang et al. 2024, arXiv:2312.06635):

* embeddings, every RMSNorm, the SwiGLU MLP, the q/k/v/o projections (with their biases and
  Qwen3's per-head q/k norms) and the LM head are copied tensor for tensor (same dtype);
* a layer kept as softmax attention becomes spikelm's sliding-window attention (``swa``) with
  the source's RoPE (theta, ``linear``/``llama3`` scaling) and grouped-query heads; with the
  source's window (Mistral), or one covering its context, it computes what the source computes;
* a layer turned into spiking gated linear attention (``gla``) reuses q/k/v/o as they are (KV
  heads shared by their query-head groups, ``gla_num_key_value_heads``) and gets new
  parameters, initialised so the layer starts close to the softmax layer it replaces:

  - **gate** ``g = logsigmoid(W_g2 W_g1 u + b_g) / 16``: ``W_g2 = 0`` and ``b_g`` constant, so
    at the start every channel decays by the same ``exp(-1 / gla_memory)`` per token, whatever
    the input: an exponential memory of ``gla_memory`` tokens. ``W_g1`` gets the usual
    ``N(0, initializer_range)``; because ``W_g2 = 0`` it does not change the initial output,
    and the gradient of ``W_g2`` (which depends on ``W_g1 u``) is non-zero from the first step,
    so the gate learns to become data-dependent (the LoRA-style zero init of one factor). The
    default memory is short (4 tokens), because that is what measured closest to the source
    (table below): without softmax's sharp, query-dependent weighting, a linear-attention
    layer that sums a long past mixes in many weakly related tokens, while most of what a
    softmax head returns comes from a few recent ones. A long memory (decay near 1, e.g.
    ``gla_memory=4096``) is what the hybrid layout's GLA layers are meant to learn eventually
    (SWA layers carry the local context); pick it with ``gla_memory`` when fine-tuning long
    enough for the layer to re-learn its weighting.
  - **per-head output norm** ``RMSNorm_head`` (``g_norm``): linear attention without softmax's
    denominator has an output scale that grows with the context; the head norm removes it.
    Its weight is set to the RMS that softmax attention's output would have if each query
    attended to one token: ``sqrt(mean_c E[v_c^2])`` with ``E[v_c^2] = sum_j W_v[c, j]^2 w_j^2
    + b_c^2`` (``w`` the weight of the layer's ``input_layernorm``, whose input is normalised to
    unit RMS per token, so ``E[u_j^2] ~= w_j^2``). The default RMSNorm weight 1 instead gives
    every head unit RMS, typically far above what ``o_proj`` was trained on (2-20x in the
    measurements).

  Measured (``tests/convert/gla_init_measure.py``) on a 4-layer Llama (D=128, 4 heads / 2 KV
  heads, BPE 512) trained 600 steps on tiny Shakespeare, validation loss 3.048 nats/token;
  converted with spiking off, "1 GLA" = layer 1 linear and the rest exact softmax, "hybrid" =
  layers 0 and 2 linear; rel. diff = ``||gla(h) - softmax(h)|| / ||softmax(h)||`` at layer 1 on
  the model's own hidden states::

      init                        1 GLA   hybrid   rel. diff   RMS ratio
      fla default (random gate,   3.585    6.502     2.02        2.18
        bias 0, norm weight 1)
      memory 4,    norm ones      3.290    5.778     1.75        2.13
      memory 512,  norm ones      3.678    6.661     2.15        2.20
      memory 2,    norm v_rms     3.130    3.415     0.81        0.75
      memory 4,    norm v_rms     3.143    3.442     0.83        0.76   <- default
      memory 16,   norm v_rms     3.187    3.697     0.97        0.77
      memory 512,  norm v_rms     3.219    4.034     1.08        0.78
      memory 4..256 per head      3.207    3.731     1.03        0.77
        (log-spaced), v_rms

  The head-norm init matters most (hybrid loss 6.50 -> 3.44); shorter memories are better on
  this model down to 2 tokens, 4 is kept as a margin for models with less local attention.
* Mixtral / Qwen2-MoE MLPs become ``moe`` layers, expert for expert (fused 3D expert tensors
  split per expert), and ``moe_experts=`` upcycles dense SwiGLU MLPs into ``moe`` layers of
  identical experts that compute the dense output (:mod:`spikelm.convert.moe`);
* adaptive spiking neurons (SpikingBrain report Eqs. 19-23, ``adaptive_spike_mode``) are
  inserted on the inputs of every q/k/v/gate, o, MLP-in and MLP-down projection (``spiking``:
  ``off`` for none);
* the tokenizer files are copied byte for byte (and ``generation_config.json``).

Streaming: the source is read one safetensors shard at a time (``safe_open``), written as one
output shard per input shard, so peak memory is about one shard, not the model.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from ..hub.ids import read_json_file
from ..models.configuration_spikelm import SpikeLMConfig
from .mapping import (
    LINEAR_MIXER,
    SOFTMAX_MIXER,
    ConversionError,
    arch_spec,
    convert_config,
    gate_bias_for_memory,
    map_tensor,
    source_windows,
)
from .moe import (
    check_upcycle_args,
    moe_tensor,
    router_note,
    upcycle_config,
    upcycle_report,
    upcycle_tensor,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")
EXTRA_FILES = ("generation_config.json",)
REPORT_NAME = "conversion_report.json"
DEFAULT_GLA_MEMORY = 4.0


def _source_shards(src: Path) -> dict[str, str]:
    """``{tensor name: shard file name}`` from ``model.safetensors.index.json`` or a single ``model.safetensors``.

    Raises:
        ConversionError: no safetensors checkpoint in ``src`` (e.g. only ``pytorch_model.bin``).
        FileNotFoundError: a shard named in the index is missing (names the file and a tensor in it).
    """
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    elif (src / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(src / "model.safetensors", framework="pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    else:
        extra = " (found PyTorch .bin weights: re-save with save_pretrained, which writes safetensors)" \
            if any(src.glob("pytorch_model*.bin")) else ""
        raise ConversionError(f"no model.safetensors or model.safetensors.index.json in {src}{extra}")
    for name, file in weight_map.items():
        if not (src / file).is_file():
            raise FileNotFoundError(f"shard {file} (holding tensor {name}, per model.safetensors.index.json) is "
                                    f"missing from {src}")
    return weight_map


def _expected_shapes(config: SpikeLMConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ``SpikeLMForCausalLM(config)``, built on the meta device (no memory)."""
    from ..models.modeling_spikelm import SpikeLMForCausalLM

    with torch.device("meta"):
        model = SpikeLMForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("head.weight", None)
    return shapes


def _tokenizer_vocab(tok_dir: Path) -> tuple[int, list[str]]:
    """``(len(tokenizer), tokenizer files)`` of ``tok_dir``. Raises ConversionError when it has none."""
    files = [f for f in TOKENIZER_FILES if (tok_dir / f).is_file()]
    if not any(f in files for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConversionError(f"no tokenizer (tokenizer.json, tokenizer.model or vocab.json) in {tok_dir}; pass "
                              "tokenizer_dir= (--tokenizer DIR) pointing at the model's tokenizer")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    return len(tok), files


def gla_init_tensors(config: SpikeLMConfig, layer: int, v_weight: torch.Tensor, v_bias: torch.Tensor | None,
                     ln_weight: torch.Tensor, memory: float = DEFAULT_GLA_MEMORY, norm_init: str = "v_rms",
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """New parameters of a GLA layer converted from softmax attention (see the module docstring).

    Args:
        config: the converted model's config (``hidden_size`` D, heads H, ``head_dim`` K,
            ``gla_gate_low_rank_dim`` r, ``gla_gate_logit_normalizer``, ``initializer_range``).
        layer: layer index (names, and the seed of ``W_g1``).
        v_weight: source ``v_proj.weight [H_kv*K, D]``; v_bias ``[H_kv*K]`` or None;
        ln_weight: the layer's ``input_layernorm.weight [D]``.
        memory: initial gate memory in tokens (per-token decay ``exp(-1/memory)``).
        norm_init: ``"v_rms"`` (head-norm weight = estimated RMS of v) or ``"ones"``.
        seed: base seed of ``W_g1`` (deterministic conversions).
    Returns:
        ``{name: tensor}`` in ``v_weight.dtype``: ``g_proj.0.weight [r, D]``,
        ``g_proj.1.weight [H*K, r]`` (zeros), ``g_proj.1.bias [H*K]``, ``g_norm.weight [K]``.
    Raises:
        ValueError: an unknown ``norm_init`` or ``memory <= 0``.
    """
    if not memory > 0:
        raise ValueError(f"gla memory must be > 0 tokens, got {memory}")
    D, H, K, r = config.hidden_size, config.num_attention_heads, config.head_dim, config.gla_gate_low_rank_dim
    dtype = v_weight.dtype
    gen = torch.Generator().manual_seed(seed * 100003 + layer)
    w1 = torch.randn(r, D, generator=gen) * config.initializer_range
    bias = gate_bias_for_memory(memory, config.gla_gate_logit_normalizer) if math.isfinite(memory) else 30.0
    if norm_init == "v_rms":
        ev2 = (v_weight.float() ** 2 * ln_weight.float()[None, :] ** 2).sum(1)
        if v_bias is not None:
            ev2 = ev2 + v_bias.float() ** 2
        scale = float(ev2.mean().sqrt())
    elif norm_init == "ones":
        scale = 1.0
    else:
        raise ValueError(f"unknown gla norm init {norm_init!r}; accepted: v_rms, ones")
    p = f"model.blocks.{layer}.att."
    return {p + "g_proj.0.weight": w1.to(dtype), p + "g_proj.1.weight": torch.zeros(H * K, r, dtype=dtype),
            p + "g_proj.1.bias": torch.full((H * K,), bias, dtype=dtype),
            p + "g_norm.weight": torch.full((K,), scale, dtype=dtype)}


def shard_tensors(src: Path, weight_map: dict[str, str], file: str):
    """Yield ``(name, tensor, report entry)`` for every tensor of the safetensors shard
    ``src/file``, by name, after checking it holds every tensor the index lists for it. The
    entry is ``{"to": [], "file", "shape", "dtype"}`` (the caller adds ``note`` and ``to``).

    Raises:
        ConversionError: a tensor listed for ``file`` in the index is missing from it.
    """
    from safetensors import safe_open

    with safe_open(src / file, framework="pt") as f:
        present = set(f.keys())
        lost = sorted(k for k, v in weight_map.items() if v == file and k not in present)
        if lost:
            raise ConversionError(f"tensor {lost[0]} is listed in model.safetensors.index.json for {file} "
                                  f"but that file does not hold it ({len(lost)} such tensors)")
        for name in sorted(present):
            t = f.get_tensor(name)
            yield name, t, {"to": [], "file": file, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def output_shard_names(files: list[str]) -> dict[str, str]:
    """Output file of each source shard: ``model.safetensors`` for one shard, else
    ``model-XXXXX-of-YYYYY.safetensors`` (one output shard per source shard, in order)."""
    n = len(files)
    return {f: ("model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors")
            for k, f in enumerate(files)}


def check_destination(name: str, dest: str, shape: tuple[int, ...], source_shape: list[int],
                      expected: dict[str, tuple[int, ...]], written: dict[str, str]) -> None:
    """Check that source tensor ``name`` may be written as ``dest`` with ``shape``.

    Raises:
        ConversionError: ``dest`` is not a parameter of the converted model, its shape differs
            from what the config implies (``source_shape`` reported), or it was already written.
    """
    if dest not in expected:
        raise ConversionError(f"tensor {name} maps to {dest}, which the converted model does not have "
                              f"(config/tensor disagreement, e.g. a bias the config does not declare)")
    if tuple(shape) != expected[dest]:
        raise ConversionError(f"shape mismatch for tensor {name}: the config implies "
                              f"{list(expected[dest])} (for {dest}), the checkpoint has {source_shape}")
    if dest in written:
        raise ConversionError(f"tensor {name} maps to {dest}, already written from another tensor")


def place_tensors(tensors: dict, name: str, source_shape: list[int], pairs: list, new: dict, entry: dict,
                  expected: dict, written: dict[str, str], new_tensors: dict[str, str], shard: str, note: str) -> None:
    """Put the tensors mapped from source tensor ``name`` (``pairs``: ``(dest, tensor)``, each checked
    by :func:`check_destination`) and the new ones made with it (``new``: ``{dest: tensor}``, e.g.
    an upcycled router, recorded in ``new_tensors`` with ``note``) into output shard ``shard``'s
    ``tensors``; ``entry["to"]`` lists the destinations. Raises ConversionError (see check_destination)."""
    for dest, v in pairs:
        check_destination(name, dest, v.shape, source_shape, expected, written)
        tensors[dest] = v.contiguous()
        written[dest] = shard
    entry["to"] = [d for d, _ in pairs]
    for dest, v in new.items():
        tensors[dest] = v
        written[dest] = shard
        new_tensors[dest] = note


def finish_shards(tmp: Path, expected: dict, written: dict[str, str], total_size: int, n_files: int) -> None:
    """After every shard is written: check that no parameter is missing and, for several
    shards, write ``model.safetensors.index.json``.

    Raises:
        ConversionError: the source lacks tensors the converted model needs (a few named).
    """
    missing = sorted(set(expected) - set(written))
    if missing:
        raise ConversionError(f"the source lacks {len(missing)} tensor(s) the converted model needs, e.g. "
                              f"{missing[:3]} (check the checkpoint is complete and matches its config.json)")
    if n_files > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(written.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def read_source(src_dir: str | Path, out_dir: str | Path) -> tuple[Path, Path, dict]:
    """``(src, out, config.json of src)`` of a Hugging Face checkpoint conversion, checked first.

    Raises:
        FileExistsError: ``out_dir`` exists (convert never overwrites).
        FileNotFoundError: ``src_dir`` has no ``config.json``.
        ValueError: its ``config.json`` is not JSON.
    """
    src, out = Path(src_dir), Path(out_dir)
    if out.exists():
        raise FileExistsError(f"output directory {out} already exists; choose a new one (convert never overwrites)")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {src}: not a Hugging Face checkpoint directory")
    return src, out, read_json_file(src / "config.json")


def _map_source_tensor(name: str, t: torch.Tensor, entry: dict, config: SpikeLMConfig, moe_source: bool, up,
                       seed: int) -> tuple[list[tuple[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``([(spikelm name, tensor)], {new name: tensor})`` of source tensor ``name`` (sets
    ``entry["note"]``): MoE tensors of a Mixtral / Qwen2-MoE source, expert copies of an
    upcycled dense MLP tensor (plus its layer's new router), else the dense mapping (the tensor
    itself, or nothing for an unused one). Raises ConversionError as :func:`map_tensor`."""
    mapped = moe_tensor(name, t, config.num_hidden_layers) if moe_source else None
    if mapped is not None:
        pairs, entry["note"] = mapped
        return pairs, {}
    dest, entry["note"] = map_tensor(name, config.num_hidden_layers, config.tie_word_embeddings)
    if dest is None:
        return [], {}
    copies = upcycle_tensor(dest, t, config, up, seed) if up is not None else None
    if copies is not None:
        pairs, new, entry["note"] = copies
        return pairs, new
    return [(dest, t)], {}


def convert_checkpoint(src_dir: str | Path, out_dir: str | Path, *, layout: str = "hybrid", spiking: str = "ste",
                       window: int | None = None, tokenizer_dir: str | Path | None = None,
                       gla_memory: float = DEFAULT_GLA_MEMORY, gla_norm_init: str = "v_rms",
                       gla_gate_low_rank_dim: int = 16, seed: int = 0, config_overrides: dict | None = None,
                       moe_experts: int | None = None, moe_top_k: int | None = None,
                       moe_shared: int | None = None) -> dict:
    """Convert an HF Llama/Qwen2/Qwen3/Mistral/Mixtral/Qwen2-MoE causal-LM checkpoint directory into a spikelm one.

    Reads ``src_dir/config.json``, the safetensors weights (``model.safetensors.index.json`` and
    its shards, or one ``model.safetensors``; one shard in memory at a time) and the tokenizer;
    writes ``out_dir`` atomically (``spikelm.train.rundir.atomic_dir``): ``config.json`` (a
    :class:`~spikelm.SpikeLMConfig`), one ``model-XXXXX-of-YYYYY.safetensors`` per source shard (+
    index; a single ``model.safetensors`` for a one-file source), the tokenizer files, and
    ``conversion_report.json``. Tensors keep their dtype; new GLA tensors take the dtype of the
    layer's ``v_proj``. The result loads with ``AutoModelForCausalLM.from_pretrained(out_dir)``
    after ``import spikelm``.

    Exactness: ``layout="softmax", spiking="off"`` (with the default window: the source's own,
    or its context length) gives a model whose logits equal the source's up to float rounding
    (``report["exact"]``).

    Args:
        src_dir: the HF checkpoint directory.
        out_dir: the new directory (must not exist).
        layout: ``"softmax" | "hybrid" | "linear"`` or a per-layer ``"gla,swa,..."`` list
            (:func:`spikelm.convert.mapping.layer_mixers`).
        spiking: ``"off" | "ste" | "expanded"`` adaptive spiking on projection inputs.
        window: SWA window (default: see :func:`spikelm.convert.convert_config`).
        tokenizer_dir: where the tokenizer is (default ``src_dir``).
        gla_memory: initial GLA gate memory in tokens (per-token decay ``exp(-1/gla_memory)``).
        gla_norm_init: ``"v_rms"`` or ``"ones"`` (GLA head-norm weight; module docstring).
        gla_gate_low_rank_dim: rank of the GLA gate.
        seed: seed of the random GLA gate factor ``W_g1`` and of upcycled routers.
        config_overrides: extra ``SpikeLMConfig`` fields (e.g. ``adaptive_spike_k``).
        moe_experts, moe_top_k, moe_shared: upcycle every SwiGLU MLP into a ``moe`` MLP of
            ``moe_experts`` routed experts (top ``moe_top_k``) and ``moe_shared`` shared ones,
            all copies of it (:mod:`spikelm.convert.moe`; the output stays the dense one's).
    Returns:
        The report (also written as ``conversion_report.json``): ``tensors`` maps every source
        tensor name to ``{"to": [spikelm names], "file", "shape", "dtype", "note"}`` (``to`` empty
        and ``note`` the reason when a tensor is not used), ``new_tensors`` maps each new
        parameter to how it was initialised, plus ``mixer_types``, ``window``, ``exact`` and the
        tokenizer's vocabulary size (and ``moe`` when upcycling).
    Raises:
        FileExistsError: ``out_dir`` exists.
        FileNotFoundError: no ``config.json``; a shard named in the index is missing (names it
            and a tensor in it).
        ConversionError (a ValueError): unsupported architecture (names the supported ones),
            RoPE type or layout; a tensor whose shape differs from what the config implies (names
            it, expected and found); a tensor listed in the index but absent from its shard; an
            unknown tensor; a tensor the model needs but the source lacks; a tokenizer with more
            tokens than the model's embedding rows (both numbers); no tokenizer; bad ``moe_*``
            values or upcycling a source that is already MoE (:func:`spikelm.convert.moe.check_upcycle_args`).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..train.rundir import atomic_dir

    up = check_upcycle_args(moe_experts, moe_top_k, moe_shared)
    src, out, raw = read_source(src_dir, out_dir)
    spec = arch_spec(raw.get("model_type"), raw.get("architectures"))
    from transformers import AutoConfig

    src_cfg = AutoConfig.from_pretrained(src)
    config = convert_config(src_cfg, layout=layout, spiking=spiking, window=window,
                            gla_gate_low_rank_dim=gla_gate_low_rank_dim, **(config_overrides or {}))
    if up is not None:
        config = upcycle_config(config, up, src)
    tied = config.tie_word_embeddings
    weight_map = _source_shards(src)
    vocab, tok_files = _tokenizer_vocab(Path(tokenizer_dir) if tokenizer_dir is not None else src)
    if vocab > config.vocab_size:
        raise ConversionError(f"vocabulary mismatch: the tokenizer has {vocab} tokens but the model's embedding "
                              f"(model.embed_tokens.weight, vocab_size) has only {config.vocab_size} rows")
    expected = _expected_shapes(config)
    gla_layers = [i for i, m in enumerate(config.mixer_types) if m == LINEAR_MIXER]
    # the small input-norm weights GLA init needs, read up front (they may sit in another shard)
    ln_weights: dict[int, torch.Tensor] = {}
    for i in gla_layers:
        name = f"model.layers.{i}.input_layernorm.weight"
        if name in weight_map:
            with safe_open(src / weight_map[name], framework="pt") as f:
                ln_weights[i] = f.get_tensor(name)
    files = sorted(set(weight_map.values()))
    out_names = output_shard_names(files)
    report_tensors: dict[str, dict] = {}
    new_tensors: dict[str, str] = {}
    written: dict[str, str] = {}
    total_size = 0
    mixers = config.mixer_types
    with atomic_dir(out) as tmp:
        for file in files:
            tensors: dict[str, torch.Tensor] = {}
            for name, t, entry in shard_tensors(src, weight_map, file):
                report_tensors[name] = entry
                pairs, new = _map_source_tensor(name, t, entry, config, spec.moe, up, seed)
                place_tensors(tensors, name, list(t.shape), pairs, new, entry, expected, written, new_tensors,
                              out_names[file], router_note(config, seed))
                if len(pairs) != 1 or pairs[0][1] is not t:
                    continue  # not used, or MoE experts / upcycled copies
                dest = pairs[0][0]
                layer = int(dest.split(".")[2]) if dest.startswith("model.blocks.") else None
                if layer is not None and ".att." in dest:
                    entry["note"] = f"copied into {mixers[layer]} layer {layer}"
                    group = config.num_attention_heads // config.gla_num_key_value_heads
                    kv = dest.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias"))
                    if mixers[layer] == LINEAR_MIXER and group > 1 and kv:
                        entry["note"] += (f" (grouped-query: each of its {config.gla_num_key_value_heads} heads "
                                          f"serves {group} query heads)")
                if name == "model.embed_tokens.weight" and tied:
                    entry["to"].append("head.weight")
                    entry["note"] = "copied; head.weight is tied to it (tie_word_embeddings)"
                if layer is not None and mixers[layer] == LINEAR_MIXER and dest.endswith("att.v_proj.weight"):
                    if layer not in ln_weights:
                        raise ConversionError(f"model.layers.{layer}.input_layernorm.weight is missing from the "
                                              "source; it is needed for the GLA init of that layer")
                    vb = f"model.layers.{layer}.self_attn.v_proj.bias"
                    v_bias = None
                    if vb in weight_map:
                        with safe_open(src / weight_map[vb], framework="pt") as fb:
                            v_bias = fb.get_tensor(vb)
                    new = gla_init_tensors(config, layer, t, v_bias, ln_weights[layer], gla_memory, gla_norm_init,
                                           seed)
                    for k, v in new.items():
                        tensors[k] = v
                        written[k] = out_names[file]
                    decay = math.exp(-1.0 / gla_memory)
                    p = f"model.blocks.{layer}.att."
                    new_tensors[p + "g_proj.0.weight"] = f"N(0, {config.initializer_range}) (seed {seed})"
                    new_tensors[p + "g_proj.1.weight"] = "zeros (gate starts input-independent)"
                    new_tensors[p + "g_proj.1.bias"] = (f"{float(new[p + 'g_proj.1.bias'][0]):.4f}: per-token decay "
                                                        f"{decay:.5f} (memory {gla_memory:g} tokens)")
                    new_tensors[p + "g_norm.weight"] = (f"{float(new[p + 'g_norm.weight'][0]):.4g} "
                                                        f"({gla_norm_init}: estimated RMS of the layer's v)")
            for dest, t in tensors.items():
                total_size += t.numel() * t.element_size()
            save_file(tensors, str(tmp / out_names[file]), metadata={"format": "pt"})
            del tensors
        finish_shards(tmp, expected, written, total_size, len(files))
        config.save_pretrained(tmp)
        from ..hub import write_remote_code

        write_remote_code(tmp)  # auto_map + self-contained modeling code: loads without spikelm installed
        tok_src = Path(tokenizer_dir) if tokenizer_dir is not None else src
        for f in tok_files:
            shutil.copy2(tok_src / f, tmp / f)
        for f in EXTRA_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)
        # exact: each layer sees what the source's did (windows compared up to the context length)
        ctx = config.max_position_embeddings
        same_window = all(min(w or ctx, ctx) == min(config.sliding_window, ctx) for w in source_windows(src_cfg))
        report = {
            "source": str(src), "source_model_type": src_cfg.model_type,
            "source_architectures": list(getattr(src_cfg, "architectures", None) or []),
            "layout": layout, "mixer_types": list(config.mixer_types), "spiking": spiking,
            "window": config.sliding_window,
            "exact": spiking == "off" and all(m == SOFTMAX_MIXER for m in mixers) and same_window,
            "gla_init": {"memory_tokens": gla_memory, "norm_init": gla_norm_init, "seed": seed} if gla_layers else None,
            "tokenizer": {"vocab": vocab, "files": tok_files, "embedding_rows": config.vocab_size},
            "output_files": sorted(set(written.values())),
            "tensors": dict(sorted(report_tensors.items())), "new_tensors": dict(sorted(new_tensors.items())),
        }
        if up is not None or spec.moe:
            report["mlp_types"] = list(config.mlp_types)
            report["moe"] = upcycle_report(up) if up is not None else {"upcycled": False}
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report
