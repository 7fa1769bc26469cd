"""Consolidate a DeepSpeed checkpoint (any ZeRO stage) into a Hugging Face directory."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .rundir import atomic_dir

MODEL_CONFIG = "model_config.json"
"""File in the run directory holding the model's HF config (written when a run starts)."""


def find_checkpoint(path: str | Path, tag: str | None = None) -> tuple[Path, Path, str]:
    """``(run_dir, checkpoints_dir, tag)`` for a run directory or its ``checkpoints`` folder.

    Raises:
        FileNotFoundError: no DeepSpeed checkpoint there, or the tag does not exist (lists the tags).
    """
    p = Path(path)
    ckpt = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    run_dir = ckpt.parent
    tags = sorted(d.name for d in ckpt.glob("*") if d.is_dir()) if ckpt.is_dir() else []
    if tag is None:
        latest = ckpt / "latest"
        if not latest.is_file():
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {p} (no 'latest' file); pass a run directory "
                                    "or its checkpoints/ folder")
        tag = latest.read_text().strip()
    if not (ckpt / tag).is_dir():
        raise FileNotFoundError(f"checkpoint tag {tag!r} not found in {ckpt}; available: {', '.join(tags) or 'none'}")
    return run_dir, ckpt, tag


def consolidated_state_dict(ckpt: Path, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights of checkpoint ``ckpt/tag``, by parameter name, whatever the ZeRO stage.

    ZeRO 1-3: DeepSpeed's ``zero_to_fp32`` (merges the optimizer's fp32 partitions);
    stage 0: the module weights saved by rank 0.
    """
    folder = ckpt / tag
    if any(folder.glob("*optim_states.pt")) and any(folder.glob("zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
    states = sorted(folder.glob("mp_rank_*_model_states.pt"))
    if not states:
        raise FileNotFoundError(f"{folder} holds no DeepSpeed model states")
    sd = torch.load(states[0], map_location="cpu", weights_only=False)["module"]
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
        FileNotFoundError: no checkpoint, config or tokenizer in the run directory.
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
    from .archs import load_config_file

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
    from ..hub import write_hf_extras

    summary = run_dir / "final" / "training_summary.json"
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if summary.is_file():
            shutil.copyfile(summary, tmp / "training_summary.json")
        if config.model_type == "spikelm":
            write_hf_extras(tmp, run_dir=run_dir, eval_results=eval_results, license=license,
                            repo_id=repo_id or out.name)
    return out
