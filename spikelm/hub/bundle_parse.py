"""The parsed modules of a package, for :mod:`spikelm.hub.bundler`: each module's source, tree and imports.

A module is found by its import spec, without importing it (:func:`_spec`), and parsed;
:class:`_Mod` records each of its import statements as an :class:`_Imp`: of the package itself
("own", resolved to ``(module, name, bound name)``), of an optional package, or other, with the
scope it runs in and the ``try`` that can replace it. The names are shared by the bundler modules
(:mod:`spikelm.hub.bundle_rules`, :mod:`spikelm.hub.bundler`), not meant for other use.

Raises :class:`BundleError` (the message names the file and line) for a module without a ``.py``
source, ``import pkg.x`` without ``as``, a relative import beyond the top package, or
``from ... import *`` of the package.
"""
from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from typing import NamedTuple

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_FUNCS = (*_DEFS, ast.Lambda)


class BundleError(RuntimeError):
    """The modules cannot be bundled (the message names the file and line)."""


class _Imp(NamedTuple):
    node: ast.stmt
    kind: str    # "own" (the package's) | "optional" (of an optional package) | "other"
    items: list  # own: [(module, name or None for the module itself, bound name)]
    scope: ast.AST | None  # innermost def/lambda/class; None at module level
    guard: ast.Try | None  # the try whose body holds it and whose handler can replace it


def file_of(root: str) -> str:
    """The file root module ``root`` goes to (``a.b.modeling_x`` -> ``modeling_x.py``)."""
    return root.rsplit(".", 1)[1] + ".py"


def _handler(t: ast.Try) -> ast.ExceptHandler | None:
    """The handler a failing import in ``t``'s body reaches, if it can replace the try (no ``as``, no finally)."""
    for h in t.handlers:
        names = {getattr(e, "id", "") for e in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])}
        if h.type is None or names & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}:
            return h if h.name is None and not t.finalbody else None
    return None


@functools.cache
def _spec(name: str):
    """The import spec of module ``name``, found without importing anything (parents included)."""
    path = None
    if "." in name:
        if (parent := _spec(name.rsplit(".", 1)[0])) is None or parent.submodule_search_locations is None:
            return None
        path = list(parent.submodule_search_locations)
    return next((s for f in sys.meta_path if hasattr(f, "find_spec") and (s := f.find_spec(name, path))), None)


class _Mod:
    """One parsed module and its imports (:class:`_Imp`)."""

    def __init__(self, name: str, optional: tuple[str, ...]):
        if (spec := _spec(name)) is None or not (spec.origin or "").endswith(".py"):
            raise BundleError(f"cannot find the source file of {name}")
        self.name, self.path, self.top, self.optional = name, Path(spec.origin), name.split(".")[0], optional
        self.pkg = name if self.path.name == "__init__.py" else name.rsplit(".", 1)[0]
        self.source = self.path.read_text()
        self.lines, self.tree, self.imports = self.source.splitlines(), ast.parse(self.source), []
        self._scan(self.tree, None)

    def where(self, node: ast.AST) -> str:
        return f"{self.path}:{node.lineno}"

    def _scan(self, node: ast.AST, scope) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                guard = node if isinstance(node, ast.Try) and child in node.body and _handler(node) else None
                self.imports.append(_Imp(child, *self._classify(child), scope, guard))
            else:
                self._scan(child, child if isinstance(child, _FUNCS) else scope)

    def _classify(self, node) -> tuple[str, list]:
        mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [
            self.top if node.level else node.module or ""]
        tops = {m.split(".")[0] for m in mods}
        if tops & set(self.optional) or self.top not in tops:
            return "optional" if tops & set(self.optional) else "other", []
        if isinstance(node, ast.Import):
            if tops != {self.top} or any(a.asname is None for a in node.names):
                raise BundleError(f"{self.where(node)}: write 'import {self.top}.x as y' or 'from ... import ...'")
            return "own", [(a.name, None, a.asname) for a in node.names]
        base, parts = node.module, self.pkg.split(".")
        if node.level:
            if node.level > len(parts):
                raise BundleError(f"{self.where(node)}: relative import beyond the top package")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
        if any(a.name == "*" for a in node.names):
            raise BundleError(f"{self.where(node)}: 'from {base} import *' cannot be bundled")
        pkg = getattr(_spec(base), "submodule_search_locations", None) is not None
        return "own", [(f"{base}.{a.name}", None, a.asname or a.name) if pkg and _spec(f"{base}.{a.name}")
                       else (base, a.name, a.asname or a.name) for a in node.names]
