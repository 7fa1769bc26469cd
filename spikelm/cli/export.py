"""``spikelm export`` and ``spikelm push``: a run's checkpoint as a Hugging Face directory, and its upload."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import CLIError

def cmd_export(argv: list[str]) -> int:
    """``spikelm export RUN_DIR OUT_DIR [...]`` (or ``ADAPTER OUT --merge-lora``). Raises CLIError."""
    p = argparse.ArgumentParser(prog="spikelm export", description="Consolidate a run's DeepSpeed checkpoint "
                                "(any ZeRO stage) into a Hugging Face directory with a model card and the "
                                "modeling code for trust_remote_code loading; optionally upload it.")
    p.add_argument("run_dir", help="a run directory (or its checkpoints/ folder); with --merge-lora: a LoRA "
                   "adapter directory (e.g. RUN/final/adapter)")
    p.add_argument("out_dir", help="new directory to write (must not exist)")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step200 (default: the latest)")
    p.add_argument("--merge-lora", action="store_true", help="RUN_DIR is a LoRA adapter: merge it into its base "
                   "model (--base, default: the one named in adapter_config.json) as a standalone directory")
    p.add_argument("--base", default=None, help="with --merge-lora: the base model directory")
    p.add_argument("--eval-json", default=None, help="spikelm eval --json output to put in the model card")
    p.add_argument("--license", default=None, help="SPDX license id for the model card, e.g. apache-2.0")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the directory to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    a = p.parse_args(argv)
    from ..train.export import export_checkpoint

    ev = _read_eval_json(a.eval_json)
    try:
        if a.merge_lora:
            from ..finetune.lora import merge_adapter_dir

            out = merge_adapter_dir(a.run_dir, a.base, a.out_dir)
        else:
            out = export_checkpoint(a.run_dir, a.out_dir, a.tag, eval_results=ev, license=a.license,
                                    repo_id=a.push_to_hub)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise CLIError(str(e)) from e
    print(f"exported {a.run_dir} to {out}")
    if a.push_to_hub:
        _push(out, a.push_to_hub, a.private)
    return 0


def _read_eval_json(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CLIError(f"eval result {path} does not exist (write it with spikelm eval ... --json > FILE)") from None
    except json.JSONDecodeError as e:
        raise CLIError(f"{path} is not JSON ({e}); write it with spikelm eval ... --json > FILE") from None


def _push(folder: Path, repo_id: str, private: bool) -> None:
    from ..hub import HubError, push_folder

    try:
        url = push_folder(folder, repo_id, private=private)
    except (HubError, FileNotFoundError) as e:
        retry = f"; retry with: spikelm push {folder} {repo_id}" if isinstance(e, HubError) else ""
        raise CLIError(f"{e}{retry}") from e
    print(f"uploaded {folder} to https://huggingface.co/{repo_id} ({url})")


def cmd_push(argv: list[str]) -> int:
    """``spikelm push MODEL_DIR REPO_ID [--private]``. Raises CLIError (offline, no access, ...)."""
    p = argparse.ArgumentParser(prog="spikelm push", description="Upload an exported Hugging Face directory to the "
                                "Hub (the directory is never modified).")
    p.add_argument("model_dir")
    p.add_argument("repo_id", help="owner/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo private")
    a = p.parse_args(argv)
    _push(Path(a.model_dir), a.repo_id, a.private)
    return 0
