"""Self-contained copy of spikelm's modeling code for Hugging Face ``trust_remote_code`` loading.

transformers' remote code (``transformers.dynamic_module_utils``) accepts only flat ``.py``
files next to ``config.json`` that import one another with ``from .module import name``; it
finds the files to copy with a line regex on those statements and checks the third-party
imports of each file (imports inside ``try`` blocks are skipped). spikelm's modeling code spans
``spikelm.models``, ``spikelm.layers``, ``spikelm.neurons`` and ``spikelm.kernels``, so
:func:`bundle_sources` follows the imports (by AST, lazy imports inside functions included)
from ``spikelm.models.configuration_spikelm`` and ``spikelm.models.modeling_spikelm``, and
writes each module found as one flat file:

* ``spikelm.models.configuration_spikelm`` -> ``configuration_spikelm.py`` and
  ``spikelm.models.modeling_spikelm`` -> ``modeling_spikelm.py`` (the ``auto_map`` targets);
  every other module ``spikelm.a.b`` -> ``spikelm_a_b.py`` (a package -> its ``__init__``);
* every spikelm import (absolute or relative) becomes a flat relative import
  (``from ..kernels.lif import heaviside`` -> ``from .spikelm_kernels_lif import heaviside``);
  an imported submodule (``from . import fused``) becomes
  ``from .spikelm_kernels_adaptive_spike_fused import __name__ as _fused_module`` plus
  ``from . import spikelm_kernels_adaptive_spike_fused as fused`` (the first line is the form
  transformers' regex sees, so the file is copied);
* ``import triton`` statements (the optional Triton kernels) outside ``try`` blocks are
  wrapped in ``try/except ImportError`` so that transformers' import check does not require
  Triton: at module level the names are bound to None on ImportError (the kernel modules are
  imported only when Triton is available, ``spikelm.kernels.dispatch.use_triton``, and their
  torch helpers keep working); inside functions the ImportError is re-raised as before.

Nothing else changes: the generated classes run the same code as the installed ones (same
logits). Each file starts with a header naming the spikelm version and source module.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import types
from pathlib import Path

ROOTS = ("spikelm.models.configuration_spikelm", "spikelm.models.modeling_spikelm")
"""Modules the bundle starts from (the targets of ``auto_map``)."""
AUTO_MAP = {"AutoConfig": "configuration_spikelm.SpikeLMConfig",
            "AutoModel": "modeling_spikelm.SpikeLMModel",
            "AutoModelForCausalLM": "modeling_spikelm.SpikeLMForCausalLM"}
"""``auto_map`` written into ``config.json``: Auto class -> ``flat_module.Class``."""
OPTIONAL_PACKAGES = ("triton",)
"""Third-party packages whose module-level imports are wrapped in ``try`` (optional at runtime)."""


class BundleError(RuntimeError):
    """The modeling code uses an import form the bundler cannot flatten (names the file and line)."""


def flat_name(module: str) -> str:
    """Flat file stem of spikelm module ``module`` (``spikelm.layers.gla`` -> ``spikelm_layers_gla``)."""
    if module in ROOTS:
        return module.rsplit(".", 1)[1]
    return module.replace(".", "_")


def _source_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise BundleError(f"cannot find the source file of {module}")
    return Path(spec.origin)


def _is_package(module: str) -> bool:
    return _source_path(module).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """Absolute name of the module ``node`` imports from, inside ``module``'s file."""
    if node.level == 0:
        return node.module
    package = module if _is_package(module) else module.rsplit(".", 1)[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        raise BundleError(f"relative import beyond the top package in {module}")
    base = ".".join(parts[:len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _is_submodule(base: str, name: str) -> bool:
    """Whether ``from base import name`` binds a submodule (Python looks up the attribute first)."""
    mod = importlib.import_module(base)
    if hasattr(mod, name):
        return isinstance(getattr(mod, name), types.ModuleType)
    try:
        return importlib.util.find_spec(f"{base}.{name}") is not None
    except ModuleNotFoundError:  # base is a plain module: no submodules
        return False


def _spikelm_imports(module: str, tree: ast.Module) -> list[tuple[ast.stmt, list[tuple[str, str | None, str]]]]:
    """Every import statement of spikelm modules in ``tree``: ``(node, [(target module, imported
    name or None for a whole module, bound name)])``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            if base != "spikelm" and not base.startswith("spikelm."):
                continue
            items = []
            for a in node.names:
                if a.name == "*":
                    raise BundleError(f"{module} line {node.lineno}: 'import *' from {base} cannot be bundled")
                if _is_submodule(base, a.name):
                    items.append((f"{base}.{a.name}", None, a.asname or a.name))
                else:
                    items.append((base, a.name, a.asname or a.name))
            out.append((node, items))
        elif isinstance(node, ast.Import):
            names = [a for a in node.names if a.name == "spikelm" or a.name.startswith("spikelm.")]
            if not names:
                continue
            if len(names) != len(node.names) or any(a.asname is None for a in names):
                raise BundleError(f"{module} line {node.lineno}: 'import spikelm...' without 'as' cannot be bundled;"
                                  " use 'from ... import ...'")
            out.append((node, [(a.name, None, a.asname) for a in names]))
    return out


def collect_modules(roots: tuple[str, ...] = ROOTS) -> list[str]:
    """Names of the spikelm modules reachable from ``roots`` through imports (lazy ones included),
    roots first, then in discovery order. Raises :class:`BundleError` for an unsupported import."""
    seen, queue = [], list(roots)
    while queue:
        m = queue.pop(0)
        if m in seen:
            continue
        seen.append(m)
        tree = ast.parse(_source_path(m).read_text())
        for _, items in _spikelm_imports(m, tree):
            for target, _, _ in items:
                if target not in seen and target not in queue:
                    queue.append(target)
    names = {}
    for m in seen:
        names.setdefault(flat_name(m), []).append(m)
    clash = {k: v for k, v in names.items() if len(v) > 1}
    if clash:
        raise BundleError(f"flat module names clash: {clash}")
    return seen


def _line_span_ok(lines: list[str], node: ast.stmt) -> bool:
    """Whether ``node`` alone occupies its lines (nothing but whitespace/comments around it)."""
    first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
    rest = last[node.end_col_offset:].strip()
    return not first[:node.col_offset].strip() and (not rest or rest.startswith("#"))


def _optional_imports(tree: ast.Module) -> list[ast.stmt]:
    """Imports of :data:`OPTIONAL_PACKAGES` that are not inside a ``try`` block (transformers'
    ``check_imports`` skips ``try`` blocks, and only those)."""
    out = []

    def visit(node):
        if isinstance(node, ast.Try):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if node.level == 0 else [])
            if names and all(n.split(".")[0] in OPTIONAL_PACKAGES for n in names):
                out.append(node)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _rewrite(module: str, source: str, version: str) -> str:
    tree = ast.parse(source)
    lines = source.splitlines()
    edits: list[tuple[int, int, list[str]]] = []  # (first line index, last line index, new lines)
    for node, items in _spikelm_imports(module, tree):
        if not _line_span_ok(lines, node):
            raise BundleError(f"{module} line {node.lineno}: put the import on lines of its own to bundle it")
        ind = " " * node.col_offset
        new: list[str] = []
        by_module: dict[str, list[str]] = {}
        for target, name, bound in items:
            if name is None:
                flat = flat_name(target)
                new.append(f"{ind}from .{flat} import __name__ as _{bound}_module  # noqa: F401 (lists the file)")
                new.append(f"{ind}from . import {flat} as {bound}")
            else:
                by_module.setdefault(target, []).append(name if name == bound else f"{name} as {bound}")
        for target, names in by_module.items():
            new.insert(0, f"{ind}from .{flat_name(target)} import {', '.join(names)}")
        edits.append((node.lineno - 1, node.end_lineno - 1, new))
    top = set(map(id, tree.body))
    for node in _optional_imports(tree):  # imports of optional packages -> try/except ImportError
        if not _line_span_ok(lines, node):
            raise BundleError(f"{module} line {node.lineno}: put the import on lines of its own to bundle it")
        stmt = lines[node.lineno - 1:node.end_lineno]
        ind = " " * node.col_offset
        bound = [a.asname or a.name.split(".")[0] for a in node.names]
        # module level: bind None so the module imports without the package (its torch helpers
        # still work); inside a function: re-raise, as before
        fallback = f"{' = '.join(bound)} = None" if id(node) in top else "raise"
        edits.append((node.lineno - 1, node.end_lineno - 1,
                      [f"{ind}try:  # optional at runtime: only the Triton kernels use it",
                       *("    " + s for s in stmt), f"{ind}except ImportError:", f"{ind}    {fallback}"]))
    for first, last, new in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[first:last + 1] = new
    header = [f"# Generated from spikelm {version} ({module}) by spikelm.hub.remote_code for",
              "# AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True). Do not edit: re-export instead."]
    return "\n".join(header + lines) + "\n"


def bundle_sources(version: str | None = None) -> dict[str, str]:
    """``{file name: source}`` of the flat, self-contained modeling code (see the module docstring).

    Args:
        version: spikelm version named in each file's header (default: the installed one).
    Raises:
        BundleError: an import form that cannot be flattened, or two modules mapping to one file.
    """
    if version is None:
        import spikelm

        version = spikelm.__version__
    out = {}
    for m in collect_modules():
        src = _rewrite(m, _source_path(m).read_text(), version)
        compile(src, flat_name(m) + ".py", "exec")  # a generated file must at least parse
        out[flat_name(m) + ".py"] = src
    return out


def write_remote_code(model_dir: str | Path) -> list[Path]:
    """Write the flat modeling code into ``model_dir`` and add ``auto_map`` to its ``config.json``.

    After this, ``AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)`` works
    where spikelm is not installed; where it is (and ``import spikelm`` ran), the installed
    classes are used and ``trust_remote_code`` is not needed.

    Args:
        model_dir: a directory written by ``save_pretrained`` of a spikelm model (config.json
            with ``model_type == "spikelm"``).
    Returns:
        The paths of the written ``.py`` files.
    Raises:
        FileNotFoundError: no ``config.json`` in ``model_dir``.
        ValueError: ``config.json`` is not a spikelm config.
        BundleError: see :func:`bundle_sources`.
    """
    d = Path(model_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{d} has no config.json; save the model there first")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "spikelm":
        raise ValueError(f"{cfg_path} holds a {cfg.get('model_type')!r} config, not a spikelm one")
    written = []
    for name, src in bundle_sources().items():
        (d / name).write_text(src)
        written.append(d / name)
    cfg["auto_map"] = dict(AUTO_MAP)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return written
