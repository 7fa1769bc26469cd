"""The two remote-code files of an exported model, for Hugging Face ``trust_remote_code`` loading.

:func:`write_remote_code` writes ``configuration_spikelm.py`` and ``modeling_spikelm.py`` next to
``config.json`` (its ``auto_map`` points at them): ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` then works in a Python without spikelm (or Triton), with the same
logits. Both files are generated from the installed sources by AST, keeping their text:

* ``configuration_spikelm.py`` holds ``spikelm.models.configuration_spikelm`` and the spikelm
  modules it imports; ``modeling_spikelm.py`` holds ``spikelm.models.modeling_spikelm`` and the
  modules it imports that the first lacks, and takes those names ``from .configuration_spikelm``
  (the one relative import; transformers copies the files such imports name).
* The modules come in dependency order (module-level imports; modules imported lazily, inside
  functions, after their importer) and their top-level statements are concatenated. spikelm
  imports are removed and names resolve at module scope (through re-exports); other imports are
  hoisted to the top. Two different top-level objects of one name are renamed
  ``<module path>__<name>`` (a root module keeps its names); an imported module object (``from .
  import dispatch``) may only be used as ``dispatch.name``.
* Triton is left out as if it were not installed, by rule rather than by file name: a module
  that imports ``triton`` (or such a module) at import time, outside ``try ... except
  ImportError``, is left out; such an import in a ``try`` whose handler catches it is replaced by
  the handler's code; any other (inside a function) by ``raise ModuleNotFoundError``, with the
  rest of its block; ``importlib.util.find_spec("triton")`` by ``None``. So
  ``triton_available()`` answers False and the torch paths run.
* What nothing uses is dropped: top-level definitions (undecorated ``def``/``class``,
  assignments to names, imports) that neither a root module nor a kept statement references,
  dead code after ``return``/``raise``, ``__all__``, the other modules' docstrings. Given the
  model's config, the ``nn.Module`` classes of non-root modules its model does not instantiate
  (built on the meta device) become stubs that raise when used: only its layers' code remains.

Each file starts with a header naming the spikelm version and its source modules. The engine is
:mod:`spikelm.hub.bundler` (generic); this module gives it the spikelm roots and checks the result.
"""
from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

from .bundler import Bundle, BundleError

ROOTS = ("spikelm.models.configuration_spikelm", "spikelm.models.modeling_spikelm")
"""The modules the two files are built from (``configuration_spikelm.py``, ``modeling_spikelm.py``)."""
AUTO_MAP = {"AutoConfig": "configuration_spikelm.SpikeLMConfig",
            "AutoModel": "modeling_spikelm.SpikeLMModel",
            "AutoModelForCausalLM": "modeling_spikelm.SpikeLMForCausalLM"}
"""``auto_map`` written into ``config.json``: Auto class -> ``file stem.Class``."""
CLASSIFICATION_ROOT = "spikelm.models.classification"
"""The third root, bundled (into ``classification.py``) only for a sequence-classification model."""
CLASSIFICATION_AUTO_MAP = {"AutoModelForSequenceClassification": "classification.SpikeLMForSequenceClassification"}
"""The ``auto_map`` entry added (to :data:`AUTO_MAP`) for a model whose ``architectures`` name
``SpikeLMForSequenceClassification``."""
OPTIONAL_PACKAGES = ("triton",)
"""Third-party packages the generated code does without (treated as not installed)."""
HEADER = "# Generated from spikelm"
"""How the generated files begin (an export removes older ``.py`` files that begin so)."""


def _root_attr(target: str):
    """The installed object an ``AUTO_MAP`` target (``file stem.Name``) names."""
    stem, name = target.split(".")
    return getattr(importlib.import_module(next(r for r in (*ROOTS, CLASSIFICATION_ROOT) if r.endswith("." + stem))),
                   name)


def _check(file: str, text: str, earlier: tuple[str, ...] = ()) -> None:
    """What transformers needs of a remote-code file: it compiles, imports neither spikelm nor the
    optional packages, and its relative imports (also for transformers' line regex, which
    docstrings can fool) name only the ``earlier`` files (``.configuration_spikelm`` in
    ``modeling_spikelm.py``; both in ``classification.py``)."""
    tree = ast.parse(text)
    compile(tree, file, "exec")
    allowed = {f.removesuffix(".py") for f in earlier}
    for n in ast.walk(tree):
        mods = [a.name for a in n.names] if isinstance(n, ast.Import) else [
            "." * n.level + (n.module or "")] if isinstance(n, ast.ImportFrom) else []
        for m in mods:
            if m.split(".")[0] in ("spikelm", *OPTIONAL_PACKAGES) or (m.startswith(".") and m[1:] not in allowed):
                raise BundleError(f"generated {file} line {n.lineno} imports {m}")
    found = set(re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE))
    found |= set(re.findall(r"^\s*import\s+\.(\S+)\s*$", text, flags=re.MULTILINE))
    if found - allowed:
        raise BundleError(f"generated {file}: transformers would look for the files {sorted(found - allowed)} (a "
                          "docstring line that reads like a relative import?)")


def collect_modules() -> dict[str, list[str]]:
    """``{file name: the spikelm modules bundled into it, in dependency order, its root last}``
    (modules that need Triton left out). Raises :class:`BundleError` like :func:`bundle_sources`."""
    return dict(Bundle(ROOTS, OPTIONAL_PACKAGES).files)


def bundle_sources(version: str | None = None, config=None, classification: bool = False) -> dict[str, str]:
    """``{"configuration_spikelm.py": source, "modeling_spikelm.py": source}`` (see the module docstring),
    and ``"classification.py"`` (``SpikeLMForSequenceClassification``) when ``classification``.

    Args:
        version: spikelm version named in each file's header (default: the installed one).
        config: the ``SpikeLMConfig`` of the model the code is for: the ``nn.Module`` classes
            (outside the root modules) that its model does not build become stubs. None: all layers.
        classification: also bundle :data:`CLASSIFICATION_ROOT` (a third file importing the first two).
    Raises:
        BundleError: a root module needs Triton at import time, a module-level import cycle,
            ``import *``, a dynamic import (``importlib.import_module``, ``__import__``, a
            ``find_spec`` other than of Triton), a module object used other than as
            ``module.name``, a name clash between the two root modules (or one a rename cannot
            fix), a removed or folded statement sharing its line, or a generated file failing
            the checks transformers needs.
    """
    if version is None:
        import spikelm

        version = spikelm.__version__
    auto_map = {**AUTO_MAP, **(CLASSIFICATION_AUTO_MAP if classification else {})}
    roots = (*ROOTS, CLASSIFICATION_ROOT) if classification else ROOTS
    models = [_root_attr(t) for key, t in auto_map.items() if key != "AutoConfig"]
    b, out = Bundle(roots, OPTIONAL_PACKAGES, config, models), {}
    for file, mods in b.files.items():
        out[file] = b.source(file, [
            f"{HEADER} {version} ({mods[-1]} and what it imports)",
            "# by spikelm.hub.remote_code, for AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)",
            "# without spikelm: the torch code (no Triton) of these modules, in this order:"])
        _check(file, out[file], tuple(out)[:-1])
    return out


def write_remote_code(model_dir: str | Path) -> list[Path]:
    """Write ``configuration_spikelm.py`` and ``modeling_spikelm.py`` for the model in ``model_dir``
    (only the layers its config uses), add ``auto_map`` to its ``config.json``, and remove the
    ``.py`` files an earlier export generated there (first line ``# Generated from spikelm``).
    A sequence-classification model (``architectures`` naming ``SpikeLMForSequenceClassification``)
    also gets ``classification.py`` and an ``AutoModelForSequenceClassification`` entry; a causal
    LM's export loads as a classifier (new ``score`` head) where spikelm is installed.

    After this, ``AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)`` works
    where spikelm is not installed; where it is (and ``import spikelm`` ran), the installed
    classes are used and ``trust_remote_code`` is not needed.

    Args:
        model_dir: a directory written by ``save_pretrained`` of a spikelm model (config.json
            with ``model_type == "spikelm"``); only its ``config.json`` is read.
    Returns:
        The paths of the written files (two, or three for a classifier).
    Raises:
        FileNotFoundError: no ``config.json`` in ``model_dir``.
        ValueError: ``config.json`` is not a spikelm config (or ``SpikeLMConfig`` rejects it).
        BundleError: see :func:`bundle_sources`.
    """
    d = Path(model_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{d} has no config.json; save the model there first")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "spikelm":
        raise ValueError(f"{cfg_path} holds a {cfg.get('model_type')!r} config, not a spikelm one")
    classification = "SpikeLMForSequenceClassification" in (cfg.get("architectures") or [])
    files = bundle_sources(config=_root_attr(AUTO_MAP["AutoConfig"]).from_pretrained(d), classification=classification)
    for old in d.glob("*.py"):
        with old.open() as f:
            stale = old.name not in files and f.readline().startswith(HEADER)
        if stale:
            old.unlink()
    for name, src in files.items():
        (d / name).write_text(src)
    cfg["auto_map"] = {**AUTO_MAP, **(CLASSIFICATION_AUTO_MAP if classification else {})}
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return [d / name for name in files]
