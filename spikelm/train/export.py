"""Hugging Face directories out of a run: :func:`write_hf_dir` (the one writer, used by the
final export, ``spikelm export`` and LoRA merges) and :func:`export_checkpoint` (a DeepSpeed
checkpoint of any ZeRO stage consolidated into such a directory)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .archs import load_config_file
from .rundir import atomic_dir

MODEL_CONFIG = "model_config.json"
"""File in the run directory holding the model's HF config (written when a run starts)."""


def write_hf_dir(out_dir: str | Path, model, tok, *, state_dict: dict | None = None, summary: dict | None = None,
                 summary_file: Path | None = None, run_dir: Path | None = None, eval_results: dict | None = None,
                 license: str | None = None, repo_id: str | None = None) -> Path:
    """Write a Hugging Face model directory atomically (``rundir.atomic_dir``: complete or absent).

    It holds safetensors weights, ``config.json``, the tokenizer, ``training_summary.json``
    (``summary``, or a copy of ``summary_file``), and for spikelm models the model card and
    the self-contained remote code with ``auto_map`` (``spikelm.hub.write_hf_extras``). A peft
    (LoRA) model is written merged (``spikelm.finetune.merge_lora`` on a copy: a standalone
    model), with the adapter alone (peft's ``adapter_config.json`` + ``adapter_model.safetensors``)
    and the tokenizer in ``out_dir/adapter``.

    Args:
        out_dir: the directory (replaced in one rename when it exists).
        model: a ``PreTrainedModel`` or peft model. tok: its tokenizer, or None.
        state_dict: the weights to save instead of ``model``'s (ZeRO-3's gathered 16-bit state).
        run_dir: the run directory the model card describes. eval_results, license, repo_id:
            for the model card (``repo_id`` defaults to the directory name).
    Returns:
        ``Path(out_dir)``.
    Raises:
        BundleError: the remote code cannot be bundled (nothing is written).
    """
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        if hasattr(model, "peft_config"):
            import copy

            from ..finetune import merge_lora

            model.save_pretrained(tmp / "adapter")
            if tok is not None:
                tok.save_pretrained(tmp / "adapter")
            model = merge_lora(copy.deepcopy(model))
        model.save_pretrained(tmp, state_dict=state_dict)
        if tok is not None:
            tok.save_pretrained(tmp)
        if summary is not None:
            (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        elif summary_file is not None and Path(summary_file).is_file():
            shutil.copyfile(summary_file, tmp / "training_summary.json")
        if getattr(model.config, "model_type", None) == "spikelm":
            from ..hub import write_hf_extras

            write_hf_extras(tmp, run_dir=run_dir, eval_results=eval_results, license=license,
                            repo_id=repo_id or out.name)
    return out


def find_checkpoint(path: str | Path, tag: str | None = None) -> tuple[Path, Path, str]:
    """``(run_dir, checkpoints_dir, tag)`` for a run directory or its ``checkpoints`` folder:
    the given tag, or the newest complete step (``checkpoint.newest_complete_step``; damaged
    or unfinished newer steps are reported on stderr and skipped).

    Raises:
        FileNotFoundError: no checkpoint there, no complete one (each step's problem listed),
            or the tag does not exist or is incomplete (lists the complete tags).
    """
    import sys

    from .checkpoint import CHECKPOINTS, CheckpointError, complete_steps, newest_complete_step

    p = Path(path)
    ckpt = p / CHECKPOINTS if (p / CHECKPOINTS).is_dir() else p
    run_dir = ckpt.parent
    good, skipped = complete_steps(ckpt)
    if not good and not skipped:
        raise FileNotFoundError(f"no DeepSpeed checkpoint in {p}; pass a run directory or its checkpoints/ folder")
    if tag is None:
        try:
            tag, newer = newest_complete_step(ckpt)
        except CheckpointError as e:
            raise FileNotFoundError(str(e)) from None
        for s in newer:
            print(f"spikelm export: checkpoint {s}; using {tag}", file=sys.stderr)
    elif tag not in good:
        why = next((s.split(": ", 1)[1] for s in skipped if s.startswith(f"{tag}:")), "not found")
        raise FileNotFoundError(f"checkpoint tag {tag!r} in {ckpt}: {why}; complete: {', '.join(good) or 'none'}")
    return run_dir, ckpt, tag


def consolidated_state_dict(ckpt: Path, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights of checkpoint ``ckpt/tag``, by parameter name, whatever the ZeRO stage.

    ZeRO 1-3: DeepSpeed's ``zero_to_fp32`` (merges the optimizer's fp32 partitions);
    stage 0: the module weights saved by rank 0; expert parallelism (one file per expert): the
    module weights and the expert files, in the plain model's names
    (:func:`spikelm.train.expert_parallel.checkpoint_state_dict`; the 16-bit weights of a bf16 run).
    """
    from .checkpoint import safe_load, safe_torch_load
    from .expert_parallel import checkpoint_state_dict

    folder = ckpt / tag
    ep_state = checkpoint_state_dict(folder)
    if ep_state is not None:
        return {k: v.float() if v.is_floating_point() else v for k, v in ep_state.items()}
    if any(folder.glob("*optim_states.pt")) and any(folder.glob("zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with safe_torch_load():  # zero_to_fp32 unpickles with weights_only=False
            return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
    states = sorted(folder.glob("mp_rank_*_model_states.pt"))
    if not states:
        raise FileNotFoundError(f"{folder} holds no DeepSpeed model states")
    sd = safe_load(states[0])["module"]
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def export_checkpoint(path: str | Path, out_dir: str | Path, tag: str | None = None, eval_results: dict | None = None,
                      license: str | None = None, repo_id: str | None = None) -> Path:
    """Write ``out_dir`` from a run's DeepSpeed checkpoint, atomically: safetensors weights, config
    (with ``auto_map``), tokenizer, the self-contained modeling code for ``trust_remote_code``
    loading and a ``README.md`` model card (:func:`spikelm.hub.write_hf_extras`), plus the run's
    ``training_summary.json`` when it has one.

    Args:
        path: a run directory or its ``checkpoints`` folder.
        out_dir: the new directory (must not exist).
        tag: checkpoint tag (default: the latest).
        eval_results: ``spikelm eval --json`` output to put in the model card, or None.
        license: SPDX license id for the model card, or None.
        repo_id: Hub id named in the model card's examples (default: the directory name).

    Raises:
        FileNotFoundError: no (complete) checkpoint, config or tokenizer in the run directory.
        CheckpointError: a checkpoint file that is not weights-only (never unpickled).
        FileExistsError: ``out_dir`` exists (never overwritten).
        ValueError: the weights do not fit the saved config (names the tensors).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import models  # noqa: F401  (registers spikelm with the Auto classes)

    run_dir, ckpt, tag = find_checkpoint(path, tag)
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new output directory")
    cfg_file, tok_dir = run_dir / MODEL_CONFIG, run_dir / "tokenizer"
    for f in (cfg_file, tok_dir):
        if not f.exists():
            raise FileNotFoundError(f"{f} is missing: export needs the run directory written by `spikelm train`")
    config = load_config_file(cfg_file)  # SpikeLMConfig, or LlamaConfig for an ANN baseline run
    model = AutoModelForCausalLM.from_config(config)
    sd = consolidated_state_dict(ckpt, tag)
    if any(k.startswith("base_model.model.") for k in sd):
        raise ValueError(f"checkpoint {ckpt / tag} is a LoRA run (peft adapter weights): its merged model is "
                         f"{run_dir / 'final'} and the adapter {run_dir / 'final' / 'adapter'}; export a full "
                         "fine-tuning or pretraining run, or resume the LoRA run to its end")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt / tag} does not fit {cfg_file}: missing {missing}, unexpected {unexpected}")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    return write_hf_dir(out, model, tok, summary_file=run_dir / "final" / "training_summary.json", run_dir=run_dir,
                        eval_results=eval_results, license=license, repo_id=repo_id)
