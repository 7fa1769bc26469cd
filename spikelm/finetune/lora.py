"""LoRA fine-tuning of spikelm models through ``peft``, and merging the adapters back.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") adds
``W x + (alpha / r) B A x`` to a frozen linear layer ``W`` with trainable ``A [r, in]``
(random init) and ``B [out, r]`` (zeros, so training starts from the base model). Here it
goes on the linear projections of the spikelm layers only; the neurons (LIF/PLIF thresholds
and time constants, adaptive spiking), norms, embeddings, RWKV decay/mix vectors and the LM
head stay frozen. ``merge_and_unload`` folds ``(alpha / r) B A`` into ``W``, which gives a
plain :class:`~spikelm.models.SpikeLMForCausalLM` with the same outputs.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

__all__ = ["DEFAULT_LORA_TARGETS", "apply_lora", "linear_module_names", "merge_adapter_dir", "merge_lora",
           "resolve_lora_targets", "save_merged"]

DEFAULT_LORA_TARGETS = (
    # RWKV-4 time-mix (SpikeGPT) and channel-mix
    "key", "value", "receptance", "output",
    # ssa/sdsa, gla, swa attention projections; gla output gate
    "q_proj", "k_proj", "v_proj", "o_proj", "og_proj",
    # SwiGLU and Spikformer's spiking MLP
    "gate_proj", "up_proj", "down_proj", "fc1", "fc2",
)
"""Default LoRA targets: name suffixes of the linear projections in ``spikelm.layers``.

Not targeted: the GLA low-rank gate ``g_proj`` (already rank 16), the LM ``head``, and every
non-linear module (neurons, norms, embeddings). Suffixes absent from a model's layout are ignored."""


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of the ``nn.Linear`` modules of ``model`` (e.g. ``model.blocks.0.att.key``), in
    module order, without those whose weight is shared with another module (a head tied to the
    token embedding): merging an adapter into a shared weight would change the other module too."""
    shared = _shared_weight_linears(model)
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in shared]


def _shared_weight_linears(model: nn.Module) -> set[str]:
    """Names of ``nn.Linear`` modules whose weight tensor another module also holds (tied weights)."""
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(id(w), []).append(name)
    return {n for names in owners.values() if len(names) > 1 for n in names
            if isinstance(model.get_submodule(n), nn.Linear)}


def _suffixes(names: list[str]) -> list[str]:
    """Deduplicated last components of module names, numeric components joined to their parent (``g_proj.0``)."""
    out: dict[str, None] = {}
    for n in names:
        parts = n.split(".")
        tail = parts[-1]
        if tail.isdigit() and len(parts) > 1:
            tail = f"{parts[-2]}.{tail}"
        out[tail] = None
    return list(out)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def resolve_lora_targets(model: nn.Module, target_modules: str | list[str] | tuple[str, ...] | None = None
                         ) -> list[str]:
    """Full names of the linear modules LoRA goes on.

    Args:
        model: the base model (a ``SpikeLMForCausalLM``, or any ``nn.Module``).
        target_modules: None: every linear module matching :data:`DEFAULT_LORA_TARGETS`;
            a list of names: modules whose full name equals one or ends with ``"." + name``
            (peft's rule), each name must match at least one linear module; a string: a
            regular expression matched against the full module name (``re.fullmatch``, peft's rule).
    Returns:
        The matching ``nn.Linear`` module names, in module order.
    Raises:
        ValueError: a target matches no module, or matches a module that is not ``nn.Linear``
            (a neuron, norm or embedding); the message lists the linear module names that
            exist (deduplicated suffixes, e.g. ``key, value, receptance, output, head``).
    """
    linear = linear_module_names(model)
    all_names = [n for n, _ in model.named_modules() if n]
    available = ", ".join(_suffixes(linear))
    if target_modules is None:
        chosen = [n for n in linear if any(_matches(n, t) for t in DEFAULT_LORA_TARGETS)]
        if not chosen:
            raise ValueError(f"none of the default LoRA targets ({', '.join(DEFAULT_LORA_TARGETS)}) is a linear "
                             f"module of this model; pass target_modules from: {available}")
        return chosen
    if isinstance(target_modules, str):
        chosen_all = [n for n in all_names if re.fullmatch(target_modules, n)]
        bad = [n for n in chosen_all if n not in linear]
        if not chosen_all:
            raise ValueError(f"LoRA target pattern {target_modules!r} matches no module; linear modules "
                             f"(name suffixes): {available}")
        if bad:
            raise ValueError(f"LoRA target pattern {target_modules!r} matches modules that are not nn.Linear "
                             f"({', '.join(bad[:5])}); LoRA goes on linear projections only: {available}")
        return chosen_all
    targets = list(target_modules)
    if not targets:
        raise ValueError(f"target_modules is empty; pass None for the defaults or names from: {available}")
    chosen: list[str] = []
    for t in targets:
        if not isinstance(t, str) or not t:
            raise ValueError(f"LoRA target {t!r} is not a module name; linear modules (name suffixes): {available}")
        hits = [n for n in all_names if _matches(n, t)]
        if not hits:
            raise ValueError(f"LoRA target {t!r} matches no module of the model; linear modules (name "
                             f"suffixes): {available}")
        bad = [n for n in hits if n not in linear]
        tied = sorted(set(bad) & _shared_weight_linears(model))
        if tied:
            raise ValueError(f"LoRA target {t!r} matches {tied[0]}, whose weight is shared with another module (e.g. "
                             "an LM head tied to the token embedding, tie_word_embeddings): merging the adapter "
                             f"would change that module too; choose from: {available}")
        if bad:
            kind = type(model.get_submodule(bad[0])).__name__
            raise ValueError(f"LoRA target {t!r} matches {bad[0]} ({kind}), not an nn.Linear; LoRA goes on the "
                             f"linear projections only (neurons, norms and embeddings stay untouched): {available}")
        chosen += hits
    return [n for n in linear if n in set(chosen)]


def apply_lora(model, *, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               target_modules: str | list[str] | tuple[str, ...] | None = None, task: str = "causal_lm"):
    """Wrap ``model`` with LoRA adapters (``peft.get_peft_model``, task ``CAUSAL_LM``, or
    ``SEQ_CLS`` for ``task="classification"``: the new ``score`` head then trains in full).

    Args:
        model: a ``SpikeLMForCausalLM`` (modified in place: its linear targets become
            ``peft.tuners.lora.Linear`` wrappers and every base parameter is frozen).
        r: LoRA rank (>= 1). alpha: scaling numerator (the update is ``alpha / r * B A``).
        dropout: dropout on the LoRA branch input (0 keeps merged == adapter outputs exactly).
        target_modules: see :func:`resolve_lora_targets` (None: the linear projections of
            every spikelm layer; never neurons, norms, embeddings or the head).
        task: ``"causal_lm"`` or ``"classification"`` (a ``*ForSequenceClassification``).
    Returns:
        ``peft.PeftModelForCausalLM``: call it like the base model (``input_ids [B, L]``,
        ``attention_mask``, ``labels`` -> ``loss``, ``logits [B, L, V]``); ``generate`` and
        ``save_pretrained`` (adapter only) work; only ``lora_A``/``lora_B`` weights have
        ``requires_grad`` (give the optimizer ``[p for p in m.parameters() if p.requires_grad]``).
    Raises:
        ValueError: ``r < 1``, ``dropout`` outside [0, 1), or a bad target (see :func:`resolve_lora_targets`).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    targets = resolve_lora_targets(model, target_modules)
    if task not in ("causal_lm", "classification"):
        raise ValueError(f"LoRA task must be causal_lm or classification, got {task!r}")
    seq_cls = task == "classification"
    config = LoraConfig(task_type=TaskType.SEQ_CLS if seq_cls else TaskType.CAUSAL_LM, r=r, lora_alpha=alpha,
                        lora_dropout=dropout, target_modules=targets, bias="none",
                        modules_to_save=["score"] if seq_cls else None)
    return get_peft_model(model, config)


def merge_lora(peft_model):
    """Fold the adapters into the base weights: ``W <- W + alpha / r * B A`` (``merge_and_unload``).

    Args:
        peft_model: the result of :func:`apply_lora` (or ``PeftModel.from_pretrained``).
            It is consumed: its base model is modified in place and returned.
    Returns:
        The base ``SpikeLMForCausalLM`` with plain ``nn.Linear`` layers and the same outputs
        (up to float rounding). Base parameters stay frozen (``requires_grad=False``).
    Raises:
        TypeError: ``peft_model`` is not a peft model.
    """
    if not hasattr(peft_model, "merge_and_unload"):
        raise TypeError(f"expected a peft model (from apply_lora or PeftModel.from_pretrained), got "
                        f"{type(peft_model).__name__}")
    return peft_model.merge_and_unload()


def _finish_config(model, tokenizer) -> None:
    """Let generation stop at the tokenizer's eos and pad with its pad token."""
    for attr in ("eos_token_id", "pad_token_id"):
        tok_id = getattr(tokenizer, attr, None)
        if tok_id is None and attr == "pad_token_id":
            tok_id = tokenizer.eos_token_id
        if tok_id is not None and getattr(model.config, attr, None) is None:
            setattr(model.config, attr, tok_id)
        gen = getattr(model, "generation_config", None)
        if gen is not None and tok_id is not None and getattr(gen, attr, None) is None:
            setattr(gen, attr, tok_id)


def _write_merged(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    from ..train.export import write_hf_dir

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new output directory (it is never overwritten)")
    _finish_config(model, tokenizer)
    return write_hf_dir(out, model, tokenizer)  # + model card and modeling code (auto_map) for spikelm


def save_merged(peft_model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write the merged model (and tokenizer, chat template included) as a standalone HF directory.

    The adapters are merged into a deep copy, so ``peft_model`` stays usable. The directory is
    written atomically (``spikelm.train.rundir.atomic_dir``) and loads with
    ``AutoModelForCausalLM.from_pretrained`` (after ``import spikelm``) and
    ``pipeline("text-generation", model=out_dir)``; it holds no peft files. ``config.eos_token_id``
    / ``pad_token_id`` are filled from the tokenizer when unset, so generation stops at eos.

    Args:
        peft_model: from :func:`apply_lora`. tokenizer: the tokenizer to save (None: none).
        out_dir: the new directory.
    Returns:
        ``Path(out_dir)``.
    Raises:
        FileExistsError: ``out_dir`` exists (never overwritten).
        TypeError: not a peft model.
    """
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new output directory (it is never overwritten)")
    merged = merge_lora(copy.deepcopy(peft_model))
    return _write_merged(merged, tokenizer, out)


def merge_adapter_dir(adapter_dir: str | os.PathLike, base_dir: str | os.PathLike | None, out_dir: str | os.PathLike
                      ) -> Path:
    """``spikelm export --merge-lora``: base model + saved adapter -> standalone merged HF directory.

    Args:
        adapter_dir: a directory written by the peft model's ``save_pretrained``
            (``adapter_config.json`` + ``adapter_model.safetensors``), optionally with the
            fine-tuning tokenizer (used when present: it holds the chat template).
        base_dir: the base spikelm HF directory; None: ``base_model_name_or_path`` from
            ``adapter_config.json`` (resolved relative to ``adapter_dir`` when not absolute
            and not found as given).
        out_dir: the new directory (never overwritten).
    Returns:
        ``Path(out_dir)``.
    Raises:
        FileNotFoundError: no adapter_config.json in ``adapter_dir``, or no base model directory.
        FileExistsError: ``out_dir`` exists.
        ValueError: the base directory holds no spikelm model, or the adapter does not fit it.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import models  # noqa: F401  (registers the Auto classes)
    from ..generation import check_model_dir

    adapter = Path(adapter_dir)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{adapter} holds no LoRA adapter (no adapter_config.json); pass the directory "
                                "written by the LoRA model's save_pretrained")
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new output directory (it is never overwritten)")
    if base_dir is None:
        named = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
        if not named:
            raise FileNotFoundError(f"{cfg_file} names no base model (base_model_name_or_path); pass base_dir")
        base = Path(named)
        if not base.is_dir() and not base.is_absolute() and (adapter / named).is_dir():
            base = adapter / named
    else:
        base = Path(base_dir)
    check_model_dir(base)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"the adapter in {adapter} does not fit the base model in {base}: {e}") from e
    tok_src = adapter if (adapter / "tokenizer_config.json").is_file() or (adapter / "tokenizer.json").is_file() \
        else base
    tokenizer = AutoTokenizer.from_pretrained(str(tok_src))
    return _write_merged(merge_lora(peft_model), tokenizer, out)
