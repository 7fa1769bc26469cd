"""Model arguments that are local directories or Hugging Face Hub ids."""
from __future__ import annotations

import json
from pathlib import Path

FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet", ".csv", ".gz", ".bz2", ".xz", ".zst", ".yaml", ".yml",
                 ".pth", ".pt", ".bin", ".safetensors", ".model")
"""File name endings that make a name a (missing) local file rather than a Hub id."""


def read_json_file(path: str | Path) -> dict:
    """A JSON object from ``path`` (a model's ``config.json``, a run's ``model_config.json``).

    Raises:
        ValueError: the file is not UTF-8 JSON holding an object (names the file and the fault).
        OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from the model or run it came from") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a JSON {type(d).__name__}, not an object of config fields")
    return d


def check_tokenizer_files(name: str | Path) -> None:
    """For a local model directory: raise ``FileNotFoundError`` when it holds no tokenizer
    (none of ``spikelm.data.tokenizer.TOKENIZER_FILES``), instead of transformers' advice to
    install sentencepiece or tiktoken. Hub ids are left to transformers."""
    from ..data.tokenizer import TOKENIZER_FILES

    d = Path(name)
    if d.is_dir() and not any((d / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"{d} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer "
                                "the model was trained with into it (tokenizer.save_pretrained)")


def is_hub_id(name: str | Path) -> bool:
    """Whether ``name`` is to be looked up as a Hugging Face Hub repo id (model, dataset or
    tokenizer): ``owner/name`` or ``name``, not an existing local path, not path-like (no
    leading ``.``, ``/`` or ``~``, no backslash, at most one ``/``), and not ending in a file
    suffix (:data:`FILE_SUFFIXES`: ``corpus.txt`` that does not exist is a missing file, not
    a dataset). The one test for every argument that takes a local path or a Hub id."""
    s = str(name)
    if not s or s.startswith((".", "/", "~")) or "\\" in s or Path(s).exists():
        return False
    parts = s.split("/")
    return len(parts) <= 2 and all(parts) and not parts[-1].lower().endswith(FILE_SUFFIXES)


def resolve_model(name: str | Path) -> tuple[str, dict]:
    """``(name for from_pretrained, config.json as a dict)`` of a local model directory or a Hub id.

    A local directory is used when it exists; otherwise a string of the form ``owner/name``
    (or ``name``) is looked up on the Hub (``config.json`` through ``hf_hub_download``, which
    uses the local cache and honours ``HF_HUB_OFFLINE``).

    Raises:
        FileNotFoundError: a local path that does not exist (and is not a Hub id), a directory
            without ``config.json``, or a Hub id that cannot be fetched (offline and not cached,
            no such repo, no access); the message says which.
    """
    s = str(name)
    d = Path(s)
    if d.is_dir():
        cfg = d / "config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"{d} is not a Hugging Face model directory (no config.json); "
                                    "pass the 'final' folder of a run, e.g. runs/shakespeare/final")
        return s, read_json_file(cfg)
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if not is_hub_id(s):
            raise HFValidationError("a path")
        validate_repo_id(s)
    except HFValidationError:
        raise FileNotFoundError(f"model directory {s} does not exist (and {s!r} is not a Hub repo id)") from None
    try:
        path = hf_hub_download(s, "config.json")
    except Exception as e:
        why = ("offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local cache" if constants.HF_HUB_OFFLINE
               else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        raise FileNotFoundError(f"{s!r} is not a local directory, so it was looked up as a Hugging Face Hub model "
                                f"id, but {why}") from None
    return s, read_json_file(path)


MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.py"]
"""What :func:`local_model_dir` fetches of a Hub model: config, weights (safetensors only),
tokenizer files, chat template, and remote code."""


def local_model_dir(name: str | Path) -> Path:
    """A local directory holding the model ``name``: the directory itself, or the Hub model
    ``name`` downloaded into the Hugging Face cache (``snapshot_download``; offline it is taken
    from the cache) for ``model.init_from`` / ``spikelm finetune``, which read the files.

    Raises:
        FileNotFoundError: as :func:`resolve_model` (missing directory, no config.json, a Hub
            id that cannot be fetched); the message says which.
    """
    s, _ = resolve_model(name)
    d = Path(s)
    if d.is_dir():
        return d
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(s, allow_patterns=MODEL_FILES))
    except Exception as e:
        raise FileNotFoundError(f"could not download the Hub model {s!r}: {type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]}") from None


def damaged_weights(name: str | Path, e: Exception) -> ValueError:
    """The one-line error for weights that safetensors cannot read (truncated or corrupt)."""
    return ValueError(f"the weights of {name} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:160]}): "
                      "model.safetensors is truncated or damaged; copy or export the model again")


def load_causal_lm(name: str | Path, **kwargs):
    """``AutoModelForCausalLM.from_pretrained(name, **kwargs)`` (spikelm registered), with
    damaged weights reported as one line.

    Raises:
        ValueError: the safetensors weights cannot be read (:func:`damaged_weights`).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from .. import models  # noqa: F401  (registers spikelm with the Auto classes)

    try:
        return AutoModelForCausalLM.from_pretrained(str(name), **kwargs)
    except SafetensorError as e:
        raise damaged_weights(name, e) from None

