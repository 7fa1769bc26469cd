"""Shipped recipes (YAML) and the small corpora they train on, installed as ``spikelm.recipes``.

The one place that knows where shipped files live: recipes by name (:func:`recipe_path`) and
corpora as ``builtin:NAME`` / ``builtin:NAME/FILE`` data entries (:func:`resolve_data_files`).
"""
from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
"""Folder holding the ``*.yaml`` recipes."""

DATA_DIR = RECIPES_DIR / "data"
LM_EVAL_DIR = RECIPES_DIR / "lm_eval"
"""The shipped lm-evaluation-harness tasks (``spikelm eval --tasks shakespeare_cloze``)."""
"""Folder of the shipped corpora, one sub-folder per ``builtin:NAME``."""

DATA_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
"""File types of a shipped corpus folder that ``builtin:NAME`` expands to."""


def shipped_recipes() -> list[str]:
    """Names of the shipped recipes (``spikelm/recipes/*.yaml``), sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """A recipe file: ``name_or_path`` itself when it is a file, else the shipped recipe of
    that name (with or without ``.yaml``).

    Raises:
        FileNotFoundError: neither (the message lists the shipped recipes).
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"recipe {name_or_path!r} not found: not a file, and not a shipped recipe "
                            f"({', '.join(shipped_recipes())})")


def resolve_data_files(files: list[str] | None) -> list[str] | None:
    """Map each ``builtin:NAME`` entry to the files of the corpus shipped in
    ``spikelm/recipes/data/NAME/`` (``builtin:NAME/FILE``: that one file); other entries
    (paths, Hub dataset names) pass through. None stays None.

    Raises:
        FileNotFoundError: an unknown corpus name (lists the shipped ones).
    """
    if files is None:
        return None
    out = []
    for f in files:
        if not f.startswith("builtin:"):
            out.append(f)
            continue
        name = f.split(":", 1)[1]
        folder = DATA_DIR / name
        if "/" in name and folder.is_file():  # builtin:NAME/FILE
            out.append(str(folder))
            continue
        if not folder.is_dir():
            known = sorted(p.name for p in DATA_DIR.iterdir() if p.is_dir()) if DATA_DIR.is_dir() else []
            raise FileNotFoundError(f"unknown builtin corpus {name!r}; shipped: {', '.join(known) or 'none'}")
        out.extend(str(p) for p in sorted(folder.iterdir()) if p.suffix in DATA_SUFFIXES)
    return out
