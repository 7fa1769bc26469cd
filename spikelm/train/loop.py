"""The training loop: data -> model -> DeepSpeed engine -> steps, evaluation, checkpoints, export.

One code path for one CPU process and for many GPUs on many nodes: the model is plain
single-device torch, DeepSpeed applies ZeRO and data parallelism around it, and the data
order is a function of the step alone (``schedule.BatchOrder``).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .config import Recipe
from .distributed import all_reduce_sum, barrier, init_distributed
from .flops import model_flops_per_token, peak_flops
from .rundir import atomic_dir, check_run_dir, prepare_run_dir
from .export import MODEL_CONFIG
from .archs import describe, flops_config, load_config_file
from .model_init import build_model
from .schedule import BatchOrder, lr_factor
from .signals import StopRequest

from ..recipes import DATA_DIR as BUILTIN_DATA


def resolve_files(files: list[str] | None) -> list[str] | None:
    """Map ``builtin:NAME`` to the corpus shipped in ``spikelm/recipes/data/NAME/``; other
    entries (paths, hub names) pass through."""
    if files is None:
        return None
    out = []
    for f in files:
        if f.startswith("builtin:"):
            name = f.split(":", 1)[1]
            folder = BUILTIN_DATA / name
            if "/" in name and folder.is_file():  # builtin:NAME/FILE
                out.append(str(folder))
                continue
            if not folder.is_dir():
                known = sorted(p.name for p in BUILTIN_DATA.iterdir() if p.is_dir()) if BUILTIN_DATA.is_dir() else []
                raise FileNotFoundError(f"unknown builtin corpus {name!r}; shipped: {', '.join(known) or 'none'}")
            out.extend(str(p) for p in sorted(folder.iterdir()) if p.suffix in (".txt", ".jsonl", ".json", ".parquet"))
        else:
            out.append(f)
    return out


def _precision(recipe: Recipe, device: torch.device) -> str:
    p = recipe.train.precision
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return p


def deepspeed_config(recipe: Recipe, world_size: int, precision: str) -> dict:
    """The DeepSpeed config a recipe implies (ZeRO stage, batch sizes, clipping, precision),
    with ``train.deepspeed`` merged over it."""
    t = recipe.train
    cfg = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "gradient_clipping": recipe.optim.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if t.zero_stage == 3:
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if t.offload_optimizer:
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        cfg["zero_force_ds_cpu_optimizer"] = False  # our AdamW is a plain torch optimizer
    if t.offload_params:
        cfg["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": True}
    for k, v in t.deepspeed.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def _with_max_length(tok, block_size: int):
    """``tok`` with ``model_max_length`` = the block size when the saved one is unset (None or
    transformers' "very large" sentinel)."""
    if tok.model_max_length is None or tok.model_max_length > 10**8:
        tok.model_max_length = block_size
    return tok


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()


def build_tokenizer(recipe: Recipe, run_dir: Path, resume: bool, rank: int, train_text, model_dir: Path | None = None,
                    model_config=None):
    """The run's tokenizer, in memory (nothing is written here).

    On resume: the one saved in ``run_dir/tokenizer``. Starting from weights (``model_dir``,
    with its ``model_config``): the recipe's ``data.tokenizer`` if set, else the model
    directory's own. Else the recipe's ``data.tokenizer``, or a byte-level BPE trained on the
    train split only (never the validation text) on rank 0 and broadcast to the other ranks.

    Raises:
        ValueError: starting from weights, the model directory has no tokenizer and none is
            set, the recipe's tokenizer differs from the model directory's (vocabulary), or
            it has more tokens than the model's ``vocab_size``.
    """
    import torch.distributed as dist
    from transformers import PreTrainedTokenizerFast

    from ..data import load_tokenizer, train_bpe_tokenizer_from_iterator

    saved = run_dir / "tokenizer"
    if resume and saved.is_dir():
        return load_tokenizer(str(saved))
    if model_dir is not None:
        own = load_tokenizer(str(model_dir)) if _has_tokenizer(model_dir) else None
        if recipe.data.tokenizer is None and own is None:
            raise ValueError(f"model.init_from {model_dir} holds no tokenizer; set data.tokenizer to the one the "
                             "model was trained with")
        tok = own if recipe.data.tokenizer is None else load_tokenizer(recipe.data.tokenizer)
        if own is not None and tok is not own and tok.get_vocab() != own.get_vocab():
            raise ValueError(f"data.tokenizer {recipe.data.tokenizer!r} does not match the tokenizer of "
                             f"model.init_from {model_dir} ({len(tok)} vs {len(own)} tokens, different "
                             "vocabularies); leave data.tokenizer unset to use the model's")
        if len(tok) > model_config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tok)} tokens but the model in {model_dir} only "
                             f"{model_config.vocab_size} embeddings; use the model's tokenizer")
        return _with_max_length(tok, recipe.data.block_size)
    if recipe.data.tokenizer is not None:
        return _with_max_length(load_tokenizer(recipe.data.tokenizer), recipe.data.block_size)
    payload = [None]
    if rank == 0:
        tok = train_bpe_tokenizer_from_iterator(train_text["text"], recipe.data.vocab_size,
                                                recipe.data.block_size, length=len(train_text))
        payload = [(tok.backend_tokenizer.to_str(), tok.eos_token, tok.model_max_length)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(payload, src=0)
    if rank == 0:
        return tok
    from tokenizers import Tokenizer

    spec, eos, max_len = payload[0]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec), eos_token=eos, pad_token=eos,
                                   model_max_length=max_len, clean_up_tokenization_spaces=False)


def _model_config(recipe: Recipe, tok):
    """A fresh model's config: ``model.arch``/``flavour``/``overrides`` plus the data's vocabulary,
    context and special token ids (``archs.build_config``)."""
    from .archs import build_config

    return build_config(recipe.model.arch, recipe.model.flavour, recipe.model.overrides, vocab_size=len(tok),
                        context_length=recipe.data.block_size, eos_token_id=tok.eos_token_id,
                        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
                        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def _context_length(config) -> int:
    return config.context_length if config.model_type == "spikelm" else config.max_position_embeddings


CONVERTED = "converted"
"""Folder of the run directory holding ``model.init_from`` converted to spikelm (``model.convert_layout``)."""


def init_dir(recipe: Recipe, run_dir: Path) -> Path | None:
    """Where the starting weights of a run are read from: ``run_dir/converted`` with
    ``model.convert_layout``, else ``model.init_from`` (None without it). No checks."""
    if recipe.model.init_from is None:
        return None
    return run_dir / CONVERTED if recipe.model.convert_layout is not None else Path(recipe.model.init_from)


def _convert(recipe: Recipe, src: Path, out: Path, rank: int) -> None:
    """Rank 0 converts the ANN ``src`` into ``out`` (reusing an ``out`` that holds the same
    conversion) while the others wait; an error on rank 0 is raised on every rank."""
    import shutil

    import torch.distributed as dist

    m = recipe.model
    error = [None]
    if rank == 0:
        try:
            from ..convert import REPORT_NAME, convert_checkpoint

            # reuse an earlier conversion only for the very same request (the window as asked,
            # None included, and the seed of the new GLA parameters)
            want = {"source": str(src.resolve()), "layout": m.convert_layout, "spiking": m.convert_spiking,
                    "window": m.convert_window, "seed": recipe.train.seed}
            request = out.parent / (out.name + ".request.json")
            same = (out / REPORT_NAME).is_file() and request.is_file() and json.loads(request.read_text()) == want
            if not same:
                if out.exists():  # another conversion: derived data, regenerated from the source
                    shutil.rmtree(out)
                created = not out.parent.exists()
                try:
                    convert_checkpoint(src.resolve(), out, layout=m.convert_layout, spiking=m.convert_spiking,
                                       window=m.convert_window, seed=recipe.train.seed)
                    request.write_text(json.dumps(want, indent=2) + "\n")
                except BaseException:
                    if created:  # leave no run directory behind for a source that cannot be converted
                        shutil.rmtree(out.parent, ignore_errors=True)
                    raise
        except (ValueError, OSError) as e:  # ConversionError is a ValueError; OSError: files
            error = [f"model.init_from {src}: conversion to spikelm failed: {e}"]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise ValueError(error[0])


def init_source(recipe: Recipe, rank: int, run_dir: Path) -> Path | None:
    """The Hugging Face directory whose weights start the run, or None without ``model.init_from``.

    With ``model.convert_layout``, the ANN in ``model.init_from`` is first converted by
    ``spikelm.convert.convert_checkpoint`` into ``run_dir/converted`` (see :func:`_convert`).

    Raises:
        FileNotFoundError: ``model.init_from`` is neither a directory with a config.json nor a
            Hub model id that can be fetched (offline: not in the cache).
        ValueError: its model type is not ``model.arch`` (names the fix), a spikelm model with
            ``model.convert_layout``, or a failed conversion (the converter's message).
    """
    src = recipe.model.init_from
    if src is None:
        return None
    from ..hub.ids import local_model_dir

    try:  # a local directory, or a Hub model id (downloaded into the HF cache)
        d = local_model_dir(src)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model.init_from: {e}; pass a model directory, e.g. runs/shakespeare/final, "
                                "or a Hub model id") from None
    kind = json.loads((d / "config.json").read_text()).get("model_type")
    if recipe.model.convert_layout is not None:
        if kind == "spikelm":
            raise ValueError(f"model.init_from {src} is already a spikelm model; drop model.convert_layout")
        _convert(recipe, d, run_dir / CONVERTED, rank)
        return run_dir / CONVERTED
    if kind != recipe.model.arch:
        hint = " or model.convert_layout (e.g. hybrid) to convert it to spikelm" if kind != "spikelm" else ""
        raise ValueError(f"model.init_from {src} holds a {kind!r} model but model.arch is {recipe.model.arch!r}; "
                         f"set model.arch: {kind} to train it as it is{hint}")
    return d


def _init_config(recipe: Recipe, model_dir: Path):
    """The config of ``model_dir`` with ``model.overrides`` applied (any field but the vocabulary
    size and special token ids), checked against ``data.block_size``."""
    config = load_config_file(model_dir / "config.json")
    fixed = sorted({"vocab_size", "eos_token_id", "bos_token_id", "pad_token_id"} & set(recipe.model.overrides))
    if fixed:
        raise ValueError(f"model.overrides may not set {fixed} with model.init_from: they belong to the weights")
    for k, v in recipe.model.overrides.items():
        if not hasattr(config, k):
            raise ValueError(f"model.overrides.{k}: {type(config).__name__} has no field {k!r}")
        setattr(config, k, v)
    if recipe.data.block_size > _context_length(config):
        raise ValueError(f"data.block_size {recipe.data.block_size} exceeds the context length "
                         f"{_context_length(config)} of model.init_from {model_dir}; lower data.block_size")
    return config


def make_batch(rows, indices, device) -> dict:
    """Model inputs of the rows ``indices`` of a split (``PackedBlocks`` or ``InstructionDataset``).

    Text blocks (``[block_size + 1]`` token ids): ``input_ids = block[:-1]`` and
    ``labels = shift_labels = block[1:]`` (already shifted: the model does not shift again).
    Instruction rows (dicts of ``[block_size]`` tensors): ``input_ids``, ``attention_mask`` and
    ``labels`` aligned with the inputs (-100 on prompt and padding; the model shifts them).
    Returns a dict of ``[B, L]`` int64 tensors on ``device``, for ``model(**batch)``.
    """
    items = [rows[i] for i in indices]
    if isinstance(items[0], dict):
        return {k: torch.stack([it[k] for it in items]).to(device) for k in ("input_ids", "attention_mask", "labels")}
    x = torch.stack(items).to(device)
    targets = x[:, 1:].contiguous()
    return {"input_ids": x[:, :-1], "labels": targets, "shift_labels": targets}


def _targets(batch: dict) -> tuple[torch.Tensor, slice]:
    """``(targets [B, L'], positions)``: the next-token targets of a batch and the slice of the
    logits (along L) that predict them; -100 marks positions without a target."""
    if "shift_labels" in batch:
        return batch["shift_labels"], slice(None)
    return batch["labels"][:, 1:], slice(None, -1)


def target_bytes_per_token(rows, tok) -> float:
    """UTF-8 bytes per target token of an instruction split: the response text (special tokens
    such as the closing eos decode to nothing) over the number of labelled targets."""
    n_bytes = n_tok = 0
    for i in range(len(rows)):
        labels = rows[i]["labels"][1:]
        ids = labels[labels != -100].tolist()
        n_tok += len(ids)
        n_bytes += len(tok.decode(ids, skip_special_tokens=True).encode("utf-8"))
    return n_bytes / max(n_tok, 1)


@torch.no_grad()
def evaluate(model, blocks, rank: int, world_size: int, batch_size: int, device, max_batches: int | None,
             bytes_per_token: float) -> dict:
    """Mean validation loss (nats/token) over the targets of the split (or its first
    ``max_batches`` batches), sharded over ranks, with bits per byte
    ``loss / ln 2 / bytes_per_token`` and perplexity. Text: every token of every block;
    instructions: the response tokens only (masked loss on held-out pairs)."""
    model.eval()
    n = len(blocks)
    starts = list(range(0, n, batch_size))
    if max_batches is not None:
        starts = starts[:max_batches]
    total, count = 0.0, 0
    for s in starts[rank::world_size]:
        batch = make_batch(blocks, range(s, min(s + batch_size, n)), device)
        targets, pos = _targets(batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                       use_cache=False).logits[:, pos].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 reduction="sum", ignore_index=-100)
        total += loss.item()
        count += int((targets != -100).sum())
    total, count = all_reduce_sum([total, float(count)], device)
    model.train()
    loss = total / max(count, 1)
    return {"loss": loss, "bpb": loss / math.log(2) / bytes_per_token, "perplexity": math.exp(min(loss, 50)),
            "tokens": int(count)}


def export_hf(engine, model, tok, out_dir: Path, zero_stage: int, rank: int, extra: dict) -> None:
    """Write a Hugging Face directory (safetensors, config, tokenizer, training summary) atomically.

    A LoRA model (peft, ZeRO 0-2) is written merged (``spikelm.finetune.merge_lora`` on a copy:
    a standalone model), with the adapter alone (peft's ``adapter_config.json`` +
    ``adapter_model.safetensors``, naming the base model directory) and the tokenizer in
    ``out_dir/adapter``."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = None
    if rank != 0:
        return
    with atomic_dir(out_dir) as tmp:
        if hasattr(model, "peft_config"):
            import copy

            from ..finetune import merge_lora

            model.save_pretrained(tmp / "adapter")
            tok.save_pretrained(tmp / "adapter")
            model = merge_lora(copy.deepcopy(model))
        model.save_pretrained(tmp, state_dict=state)
        tok.save_pretrained(tmp)
        (tmp / "training_summary.json").write_text(json.dumps(extra, indent=2) + "\n")
        if getattr(model.config, "model_type", None) == "spikelm":
            from ..hub import write_hf_extras

            # model card + self-contained modeling code (auto_map) for users without spikelm
            write_hf_extras(tmp, run_dir=out_dir.parent)


def spike_rates(module) -> dict[str, float]:
    """``SpikeLMModel.spike_rates()`` of the last forward pass of a (possibly peft-wrapped) causal
    LM; ``{}`` for a model without spikes (the Llama ANN baseline)."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    backbone = getattr(base, "model", None)
    return backbone.spike_rates() if hasattr(backbone, "spike_rates") else {}


def instruction_splits(recipe: Recipe, train_files: list[str], val_files: list[str] | None, tok):
    """``(train, val, warnings)``: :class:`spikelm.finetune.InstructionDataset` rows of
    ``data.block_size`` tokens (``data.packing``) from the jsonl ``train_files`` and ``val_files``
    (None: the last ``data.val_fraction`` of the train records). Gives ``tok`` a chat template
    when it has none (``ensure_chat_template``), so it is saved with the model.

    Raises:
        FileNotFoundError: a missing file. ValueError: a file that is not jsonl, no usable
            record, or fewer than 2 records to split.
    """
    from ..finetune import InstructionDataset, ensure_chat_template, read_jsonl

    ensure_chat_template(tok)
    warnings: list[str] = []

    def records(files):
        out = []
        for f in files:
            if not f.endswith(".jsonl"):
                raise ValueError(f"data.format instructions reads .jsonl files, got {f}")
            recs, warns = read_jsonl(f)
            out += recs
            warnings.extend(warns)
        return out

    train_recs = records(train_files)
    if val_files is None:
        if len(train_recs) < 2:
            raise ValueError(f"{len(train_recs)} instruction record(s) in {train_files}: too few to split off a "
                             "validation part; give data.val_files")
        n_val = min(len(train_recs) - 1, max(1, round(len(train_recs) * recipe.data.val_fraction)))
        train_recs, val_recs = train_recs[:-n_val], train_recs[-n_val:]
    else:
        val_recs = records(val_files)
    kw = dict(max_length=recipe.data.block_size, packing=recipe.data.packing)
    train_ds, val_ds = InstructionDataset(train_recs, tok, **kw), InstructionDataset(val_recs, tok, **kw)
    return train_ds, val_ds, warnings + train_ds.warnings + val_ds.warnings


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> dict:
    """Run a recipe end to end; returns the final summary (validation loss/BPB, tokens/s, paths).

    Raises:
        RunDirError: the run directory holds a run (no --resume/--overwrite) or has nothing to resume.
        ValueError / FileNotFoundError: bad data, tokenizer or recipe values (message says which).
    """
    import deepspeed
    from tqdm.auto import tqdm

    from .config import validate_recipe

    validate_recipe(recipe)  # also for recipes built in Python (the CLI validates before)

    from ..data import PackedBlocks, corpus_stats, load_documents, load_text_splits, pack_blocks
    t_start = time.time()
    r, t = recipe, recipe.train
    if t.threads:
        torch.set_num_threads(t.threads)
    rank, world, device = init_distributed(t.collective_timeout_s)
    if device.type == "cpu":
        # The WKV running-max form evaluates exp() of large negative numbers; denormal results
        # make x86 arithmetic 10-100x slower (seen as sudden multi-second steps). Flush them.
        torch.set_flush_denormal(True)
    run_dir = Path(t.run_dir)
    check_run_dir(run_dir, resume, overwrite)
    # Everything that can fail on bad input (files, corpus, tokenizer, block size, model) runs
    # before anything is written to the run directory.
    train_files = resolve_files(r.data.train_files)
    val_files = resolve_files(r.data.val_files)
    text = r.data.format == "text"
    if r.data.streaming:  # the train split is read as a stream below; the held-out set is loaded
        train_text, val_text = None, load_documents(val_files, r.data.text_field, "validation")
    else:
        train_text, val_text = load_text_splits(train_files, val_files, r.data.val_fraction, r.data.text_field) \
            if text else (None, None)
    # resume: the run's own config (the checkpoint holds the weights); else init_from's or a fresh one
    src = None if resume else init_source(r, rank, run_dir)
    config = load_config_file(run_dir / MODEL_CONFIG) if resume and (run_dir / MODEL_CONFIG).is_file() \
        else _init_config(r, src) if src is not None else None
    tok = build_tokenizer(r, run_dir, resume, rank, train_text, model_dir=src, model_config=config)
    if r.data.streaming:
        from ..data.streaming import StreamingBlocks, open_stream

        train_blocks = StreamingBlocks(open_stream(train_files, r.data.text_field), tok, r.data.block_size,
                                       r.data.stream_shards, t.micro_batch_size * t.grad_accum * world, rank, world,
                                       t.seed, r.data.shuffle_buffer)
        val_blocks = PackedBlocks(pack_blocks(val_text, tok, r.data.block_size))
        val_bytes_per_token = corpus_stats(val_text, tok)["bytes_per_token"]
        unit = "blocks"
    elif text:
        train_blocks = PackedBlocks(pack_blocks(train_text, tok, r.data.block_size))
        val_blocks = PackedBlocks(pack_blocks(val_text, tok, r.data.block_size))
        val_bytes_per_token = corpus_stats(val_text, tok)["bytes_per_token"]
        unit = "blocks"
    else:
        train_blocks, val_blocks, warnings = instruction_splits(r, train_files, val_files, tok)
        for w in warnings:
            _log(rank, f"data warning: {w}")
        val_bytes_per_token = target_bytes_per_token(val_blocks, tok)
        unit = "padded instruction rows" if r.data.packing == "pad" else "packed instruction rows"
    n_train = f"{r.data.stream_shards} streams of" if r.data.streaming else len(train_blocks)
    _log(rank, f"data: {n_train} train / {len(val_blocks)} validation {unit} of {r.data.block_size} tokens; "
               f"vocab {len(tok)}; validation {val_bytes_per_token:.3f} bytes/token")

    if config is None:
        config = _model_config(r, tok)
    precision = _precision(r, device)
    ds_cfg = deepspeed_config(r, world, precision)
    base = init_dir(r, run_dir)  # a LoRA adapter names its base model by it: a local directory as an
    if base is not None:         # absolute path, a Hub id as the id (not its cache snapshot)
        config._name_or_path = str(base.resolve()) if base.is_dir() else r.model.init_from
    model = build_model(config, ds_cfg, t.zero_stage, t.seed, weights_dir=src)
    if t.activation_checkpointing:
        model.activation_checkpointing_enable()  # recompute each block in the backward pass
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    flops_per_token = model_flops_per_token(model, flops_config(config), r.data.block_size)
    lora = r.model.lora
    if lora.r:
        from ..finetune import apply_lora

        torch.manual_seed(t.seed)  # the adapters' init, the same on every rank
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                           target_modules=lora.target_modules)
    n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    peak = peak_flops(device, precision)

    def mfu(tokens_per_s: float) -> float | None:  # model FLOPs utilisation (spikelm.train.flops)
        return flops_per_token * tokens_per_s / (peak * world) if peak and tokens_per_s else None

    if rank == 0:
        prepare_run_dir(run_dir, resume, overwrite)
        if not resume:
            with atomic_dir(run_dir / "tokenizer") as tmp:
                tok.save_pretrained(tmp)
            config.to_json_file(str(run_dir / MODEL_CONFIG))
    barrier()
    origin = f"weights of {src}" if src is not None else "resumed" if resume else r.model.flavour
    _log(rank, f"model: {origin} ({describe(config)}), {n_params / 1e6:.2f}M parameters"
               + (f"; LoRA r={lora.r}: {n_trainable / 1e6:.3f}M trainable" if lora.r else ""))
    o = r.optim
    # only trainable parameters (with LoRA: the adapters) go to the optimizer
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=o.lr, betas=tuple(o.betas), eps=o.eps)

    def make_scheduler(opt):  # built on the optimizer DeepSpeed wraps (ZeRO-3 regroups the parameters)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, o.warmup_steps, t.max_steps,
                                                                          o.min_lr_ratio, o.schedule,
                                                                          o.decay_fraction))

    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                           lr_scheduler=make_scheduler, config=ds_cfg)
    ckpt_dir = run_dir / "checkpoints"
    start_step = 0
    if resume:
        _, client = engine.load_checkpoint(str(ckpt_dir))
        if client is None:
            raise ValueError(f"could not load the checkpoint in {ckpt_dir}")
        start_step = client["step"]
        torch.set_rng_state(client["rng_cpu"])
        _log(rank, f"resumed from {ckpt_dir} at step {start_step}")

    order = train_blocks if r.data.streaming else \
        BatchOrder(len(train_blocks), t.micro_batch_size * t.grad_accum * world, t.seed)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
        (run_dir / "recipe.json").write_text(json.dumps(asdict(r), indent=2) + "\n")
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0 and resume and metrics_path.exists():
        # steps logged after the checkpoint we resume from are redone: drop their old records
        kept = [l for l in metrics_path.read_text().splitlines() if l and json.loads(l)["step"] <= start_step]
        metrics_path.write_text("".join(l + "\n" for l in kept))
    metrics_f = open(metrics_path, "a") if rank == 0 else None

    def log_metrics(rec: dict) -> None:
        if metrics_f is not None:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()

    def save_checkpoint(step: int) -> None:
        engine.save_checkpoint(str(ckpt_dir), tag=f"step{step}",
                               client_state={"step": step, "rng_cpu": torch.get_rng_state()})
        if rank == 0:
            tags = sorted((p for p in ckpt_dir.glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
            for old in tags[:-t.keep_checkpoints]:
                import shutil

                shutil.rmtree(old, ignore_errors=True)
        barrier()

    tokens_per_step = order.global_batch * r.data.block_size
    bar = tqdm(total=t.max_steps, initial=start_step, disable=rank != 0, desc="train", unit="step",
               dynamic_ncols=True)
    engine.train()
    last_eval, stopped, nonfinite, done = None, None, 0, start_step
    t_loop, tokens_seen = time.time(), 0
    with StopRequest() as stop:
        for step in range(start_step, t.max_steps):
            micro = order.rank_micro_batches(step, rank, world, t.micro_batch_size)
            batches = [make_batch(train_blocks, mb, device) for mb in micro]
            extra = {}
            if not text:
                # Instruction rows hold different numbers of answer tokens: weight every token of
                # the step alike (not every micro-batch). Each micro-batch loss is its token sum
                # over N / (accumulation x ranks), N = the step's answer tokens on all ranks, so
                # that DeepSpeed's 1/accumulation and rank averaging give sum / N.
                n_local = sum(int((_targets(b)[0] != -100).sum()) for b in batches)
                n_all = all_reduce_sum([float(n_local)], device)[0]
                extra["num_items_in_batch"] = max(n_all, 1.0) / (len(micro) * world)
            loss_sum = 0.0
            for batch in batches:
                out = engine(**batch, use_cache=False, **extra)
                engine.backward(out.loss)
                engine.step()
                loss_sum += out.loss.item()
            # one collective for the mean loss and whether any rank was asked to stop
            loss_sum, n_stop = all_reduce_sum([loss_sum / len(micro), float(stop.requested is not None)], device)
            loss = loss_sum / world
            done = step + 1
            if not math.isfinite(loss):
                nonfinite += 1
                # fp16/bf16: DeepSpeed's overflow check has already skipped this optimizer step;
                # fp32 has no such check, so the (now NaN) weights end the run.
                skipped = precision in ("fp16", "bf16")
                msg = f"step {done}: training loss is {loss}"
                if not skipped or nonfinite > t.max_nonfinite_steps:
                    raise FloatingPointError(f"{msg} ({nonfinite} non-finite step(s), train.max_nonfinite_steps="
                                             f"{t.max_nonfinite_steps}, precision {precision}); lower optim.lr, "
                                             "check the data, or resume from the last checkpoint")
                bar.write(f"{msg}; optimizer step skipped by DeepSpeed's overflow check") if rank == 0 else None
            tokens_seen += tokens_per_step
            elapsed = time.time() - t_loop
            tok_s = tokens_seen / max(elapsed, 1e-9)
            rec = {"step": done, "loss": loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tok_s,
                   "elapsed_s": elapsed, "epoch": order.epoch_of(done),
                   "mfu": mfu(tok_s)}
            stats = spike_rates(engine.module)
            # spike rates of the LIF sites vs. sparsity of adaptive-spiking projection inputs
            rates = {k: v for k, v in stats.items() if not k.endswith(".sparsity")}
            sparsity = {k[:-len(".sparsity")]: v for k, v in stats.items() if k.endswith(".sparsity")}
            if writer is not None and (t.log_every and done % t.log_every == 0 or done == t.max_steps):
                writer.add_scalar("train/loss", loss, done)
                writer.add_scalar("train/lr", rec["lr"], done)
                writer.add_scalar("train/tokens_per_s", tok_s, done)
                for name, v in rates.items():
                    writer.add_scalar(f"spike_rate/{name}", v, done)
                for name, v in sparsity.items():
                    writer.add_scalar(f"input_sparsity/{name}", v, done)
            rec["spike_rate"] = sum(rates.values()) / len(rates) if rates else None
            rec["input_sparsity"] = sum(sparsity.values()) / len(sparsity) if sparsity else None
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", **({"val_bpb": f"{last_eval['bpb']:.3f}"} if last_eval else {}))
            bar.update(1)
            if (t.eval_every and done % t.eval_every == 0) or done == t.max_steps:
                last_eval = evaluate(engine.module, val_blocks, rank, world, t.micro_batch_size, device,
                                     t.eval_max_batches, val_bytes_per_token)
                rec.update({f"val_{k}": v for k, v in last_eval.items()})
                if writer is not None:
                    writer.add_scalar("val/loss", last_eval["loss"], done)
                    writer.add_scalar("val/bpb", last_eval["bpb"], done)
                bar.write(f"step {done}: train loss {loss:.4f}, val loss {last_eval['loss']:.4f}, "
                          f"val bpb {last_eval['bpb']:.4f}") if rank == 0 else None
            log_metrics(rec)
            if (t.checkpoint_every and done % t.checkpoint_every == 0) or done == t.max_steps or n_stop:
                save_checkpoint(done)
            if n_stop:
                stopped = stop.requested or "a signal on another rank"
                bar.write(f"stopped by {stopped} after step {done}; checkpoint saved, continue with --resume") \
                    if rank == 0 else None
                break
    bar.close()
    train_time = time.time() - t_loop
    tokens_per_s = tokens_seen / max(train_time, 1e-9) if tokens_seen else None
    summary = {
        "steps": t.max_steps, "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_s,
        "train_seconds": train_time, "val": last_eval, "parameters": n_params, "trainable_parameters": n_trainable,
        "world_size": world, "precision": precision, "zero_stage": t.zero_stage,
        "model_flops_per_token": flops_per_token,
        "mfu": mfu(tokens_per_s),
        "stopped_by": stopped, "last_step": done,
    }
    if stopped:  # preempted: the checkpoint is the result; no "final" export of a partial run
        for f in (writer, metrics_f):
            if f is not None:
                f.close()
        summary["wall_seconds"] = time.time() - t_start
        return summary
    if last_eval is None and start_step >= t.max_steps:
        summary["val"] = evaluate(engine.module, val_blocks, rank, world, t.micro_batch_size, device,
                                  t.eval_max_batches, val_bytes_per_token)
    export_hf(engine, engine.module, tok, run_dir / "final", t.zero_stage, rank, summary)
    barrier()
    if writer is not None:
        writer.close()
    if metrics_f is not None:
        metrics_f.close()
    summary["wall_seconds"] = time.time() - t_start
    summary["final_dir"] = str(run_dir / "final")
    return summary
