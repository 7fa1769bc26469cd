"""Hugging Face Hub integration: self-contained remote code, model cards, uploads, Hub ids.

* :func:`write_hf_extras`: what every exported HF directory gets besides weights/config/
  tokenizer: the two generated remote-code files ``configuration_spikelm.py`` and
  ``modeling_spikelm.py`` + ``auto_map`` (:mod:`spikelm.hub.remote_code`) and a ``README.md``
  model card (:mod:`spikelm.hub.model_card`).
* :func:`push_folder`: upload a directory (:mod:`spikelm.hub.upload`).
* :func:`resolve_model`: a local directory or a Hub id (:mod:`spikelm.hub.ids`).

Loading an exported directory (transformers 5.23):

* spikelm installed and imported (``import spikelm``): ``model_type "spikelm"`` is registered,
  so ``AutoModelForCausalLM.from_pretrained(dir)`` uses the installed classes and never asks
  for ``trust_remote_code``; even with ``trust_remote_code=True`` the installed classes win
  (transformers prefers explicitly registered non-transformers classes over ``auto_map``).
* spikelm not installed, or installed but not imported: ``config.json``'s ``auto_map`` points
  to the shipped code; ``trust_remote_code=True`` loads it (without it transformers refuses).
"""
from __future__ import annotations

from pathlib import Path

from .ids import resolve_model
from .model_card import model_card, write_model_card
from .remote_code import AUTO_MAP, BundleError, bundle_sources, write_remote_code
from .upload import HubError, push_folder


def write_hf_extras(out_dir: str | Path, run_dir: str | Path | None = None, eval_results: dict | None = None,
                    license: str | None = None, repo_id: str | None = None) -> list[Path]:
    """Add the remote code (+ ``auto_map`` in ``config.json``) and the ``README.md`` model card to
    a directory just written by ``save_pretrained`` (call it inside the ``atomic_dir`` block).

    Args:
        out_dir: the HF directory (``config.json`` of a spikelm model, ``model.safetensors``).
        run_dir: the run directory for the card's training section (``recipe.json``,
            ``metrics.jsonl``); ``out_dir/training_summary.json`` is read when present.
        eval_results: ``spikelm eval --json`` output for the card, or None.
        license: SPDX license id for the card, or None.
        repo_id: Hub id named in the card's examples (default: the directory name).
    Returns:
        The written files.
    Raises:
        FileNotFoundError / ValueError: ``out_dir`` is not a spikelm HF directory.
        BundleError: the modeling code cannot be bundled.
    """
    files = write_remote_code(out_dir)
    files.append(write_model_card(out_dir, run_dir, eval_results, license, repo_id))
    return files


__all__ = ["write_hf_extras", "write_remote_code", "bundle_sources", "AUTO_MAP", "BundleError", "model_card",
           "write_model_card", "push_folder", "HubError", "resolve_model"]
