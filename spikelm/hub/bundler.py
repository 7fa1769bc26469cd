"""Bundle root modules of a package, with what they import from it, into one self-contained file each.

The engine of :mod:`spikelm.hub.remote_code`, whose docstring gives the rules and the result. It
works on the AST and writes the source text back (comments and layout kept), and is generic in
the package (that of the roots), the roots and the optional third-party packages to do without.
"""
from __future__ import annotations

import ast
import functools
import importlib
import itertools
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

STUB_BASE = "_NotInThisExport"
_STUB_CODE = '''

class _LeftOut(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{cls.__name__} is left out of this export: its model's config does not use it"
                             " (load the model with TOP installed)")


class STUB_BASE(metaclass=_LeftOut):
    """Stands for a layer left out of this export."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} is left out of this export: its model's config"
                                  " does not use it (load the model with TOP installed)")'''
_RAISE = ast.Raise()  # stands for an import replaced by a raise of ModuleNotFoundError
_DROP, _HOIST, _STUB = "drop", "hoist", "stub"
_ENDS = (ast.Return, ast.Raise, ast.Break, ast.Continue)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_FUNCS = (*_DEFS, ast.Lambda)
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_DYNAMIC = {"import_module", "__import__", "find_spec", "find_loader"}


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


def _start(s: ast.AST) -> int:
    return min([s.lineno] + [d.lineno for d in getattr(s, "decorator_list", [])])


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


class _Scope:
    def __init__(self, kind: str):
        self.kind, self.bound, self.glob, self.alias = kind, set(), set(), {}


class Bundle:
    """The analysis of the files (one per root module, named after it); :meth:`source` writes one.

    Args:
        roots: the root modules, of one package; each file holds its root and the modules it
            imports that the earlier files lack (whose names it imports from them).
        optional: third-party packages the files do without (left out as if not installed).
        config, models: when given, the ``torch.nn.Module`` classes (outside the roots) that no
            ``model(config)`` of ``models`` instantiates (built on the meta device) become stubs.
    Raises:
        BundleError: see :func:`spikelm.hub.remote_code.bundle_sources`.
    """

    def __init__(self, roots: tuple[str, ...], optional: tuple[str, ...] = (), config=None, models=()):
        self.roots, self.optional, self.top = tuple(roots), tuple(optional), roots[0].split(".")[0]
        self.mods: dict[str, _Mod] = {}
        todo = list(self.roots)
        while todo:
            if (m := todo.pop()) not in self.mods:
                self.mods[m] = _Mod(m, self.optional)
                todo += [t for i in self.mods[m].imports if i.kind == "own" for t, _, _ in i.items]
        self.needs: dict[str, _Imp] = {}  # module -> the import that makes it need an optional package
        while more := {m.name: i for m in self.mods.values() if m.name not in self.needs
                       for i in m.imports if i.scope is None and i.guard is None and self._fails(i)}:
            self.needs.update(more)
        for r in (r for r in self.roots if r in self.needs):
            raise BundleError(f"{r} needs {'/'.join(self.optional)} to import ({self.mods[r].where(self.needs[r].node)}"
                              "); import it inside a function or in 'try ... except ImportError:'")
        self.files, done = {}, []
        for r in self.roots:
            self.files[file_of(r)] = order = self._order(r, set(done))
            done += order
        self.fate, self.future, self.docs, self.units, self.hoisted, self.imported = {}, set(), {}, {}, {}, {}
        for m in done:
            self._fates(self.mods[m])
        self._stubs(config, models)
        self._names()
        self.edits, self.refs = defaultdict(list), {}
        for m in done:
            self.mod = self.mods[m]
            for s in self.units[m]:
                self.cur = self.refs[id(s)] = set()
                self.cur.add(STUB_BASE) if self.fate.get(id(s)) == _STUB else self._visit(s, [_Scope("module")])
        self._shake()

    def _fails(self, imp: _Imp) -> bool:
        """Whether import ``imp`` fails without the optional packages."""
        return imp.kind == "optional" or (imp.kind == "own" and any(t in self.needs for t, _, _ in imp.items))

    def _order(self, root: str, skip: set[str]) -> list[str]:
        """``root`` and the modules it imports (not in ``skip``), dependencies first (lazy ones after)."""
        out, state = [], {}

        def visit(m: str):
            if m in skip or state.get(m) == 2:
                return
            if state.get(m) == 1:
                raise BundleError(f"module-level import cycle through {m}; make one of its imports lazy")
            state[m] = 1
            deps = [(i.scope is None, t) for i in self.mods[m].imports if i.kind == "own" and not self._fails(i)
                    for t, _, _ in i.items]
            any(visit(t) for now, t in deps if now)
            state[m] = 2
            out.append(m)
            any(visit(t) for now, t in deps if not now)

        visit(root)
        return out

    def _fates(self, mod: _Mod) -> None:
        """What each statement becomes: dropped, hoisted, a raise, or (a try) its handler's code."""
        fate, self.imported[mod.name] = self.fate, {}
        for imp in (i for i in mod.imports if i.kind != "other"):
            self._own_lines(mod, imp.node)
            if not self._fails(imp):
                fate[id(imp.node)] = _DROP
                if imp.scope is None:
                    self.imported[mod.name].update({bound: (t, attr) for t, attr, bound in imp.items})
            elif imp.guard is not None:
                k = imp.guard.body.index(imp.node)
                fate[id(imp.guard)] = (min(k, fate.get(id(imp.guard), (k,))[0]), _handler(imp.guard))
            else:
                fate[id(imp.node)] = _RAISE
        units = self.units[mod.name] = []
        for i, s in enumerate(self._kept(mod.tree.body)):
            if i == 0 and isinstance(s, ast.Expr) and isinstance(getattr(s.value, "value", None), str):
                self.docs[mod.name], fate[id(s)] = s, _DROP
            elif isinstance(s, ast.ImportFrom) and s.module == "__future__":
                self.future.add(mod.name)
                fate[id(s)] = _DROP
            elif isinstance(s, (ast.Import, ast.ImportFrom)) and id(s) not in fate:
                self._own_lines(mod, s)
                fate[id(s)], frm = _HOIST, isinstance(s, ast.ImportFrom)
                if any(a.name == "*" for a in s.names):
                    raise BundleError(f"{mod.where(s)}: 'import *' cannot be bundled")
                for a in s.names:
                    bound = a.asname or (a.name if frm else a.name.split(".")[0])
                    self.hoisted[(mod.name, bound)] = (f"{s.module}.{a.name}" if frm else a.name if a.asname
                                                       else bound, s, a)
            elif isinstance(s, ast.Assign) and [getattr(t, "id", None) for t in s.targets] == ["__all__"]:
                fate[id(s)] = _DROP
            elif s is not _RAISE:
                units.append(s)

    def _own_lines(self, mod: _Mod, node: ast.stmt) -> None:
        first, last = mod.lines[node.lineno - 1].encode(), mod.lines[node.end_lineno - 1].encode()
        rest = last[node.end_col_offset:].strip()
        if first[:node.col_offset].strip() or (rest and not rest.startswith(b"#")):
            raise BundleError(f"{mod.where(node)}: put the statement on lines of its own to bundle it")

    def _kept(self, stmts: list):
        """The statements of a block that remain: folded tries expanded, ``_RAISE`` for a replaced
        import, nothing after a return/raise/break/continue."""
        for s in stmts:
            f = self.fate.get(id(s))
            items = [s] if f is None or f == _STUB else [_RAISE] if f is _RAISE else []
            if isinstance(f, tuple):
                items = list(self._kept(s.body[:f[0]]))
                items += [] if items and isinstance(items[-1], _ENDS) else self._kept(f[1].body)
            yield from items
            if items and isinstance(items[-1], _ENDS):
                return

    def _children(self, node: ast.AST):
        for value in (getattr(node, f, None) for f in node._fields):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                yield from (s for s in self._kept(value) if s is not _RAISE)
            elif isinstance(value, (list, ast.AST)):
                yield from (v for v in (value if isinstance(value, list) else [value]) if isinstance(v, ast.AST))

    def _binds(self, stmts) -> set[str]:
        """Names that (kept) statements ``stmts`` bind in the scope they run in."""
        out, todo = set(), [s for s in stmts if s is not _RAISE]
        while todo:
            n = todo.pop()
            if isinstance(n, _DEFS) or (isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)):
                out.add(getattr(n, "name", None) or n.id)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                out |= {a.asname or a.name.split(".")[0] for a in n.names}
            elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar, ast.MatchMapping)):
                out |= {x for x in (getattr(n, "name", None), getattr(n, "rest", None)) if x}
            if not isinstance(n, (*_FUNCS, *_COMPS)):
                todo += self._children(n)
        return out

    def _stubs(self, config, models) -> None:
        """Mark the ``nn.Module`` classes (outside the roots) that no ``model(config)`` builds."""
        if config is None:
            return
        import torch

        used = set()
        for model in models:
            with torch.device("meta"):
                built = model(config)
            used |= {(c.__module__, c.__qualname__) for sub in built.modules() for c in type(sub).__mro__}
        for m, units in self.units.items():
            for s in (s for s in units if m not in self.roots and isinstance(s, ast.ClassDef)):
                if not s.decorator_list and (m, s.name) not in used:
                    obj = getattr(importlib.import_module(m), s.name, None)
                    if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == m:
                        self.fate[id(s)] = _STUB

    # -- names ------------------------------------------------------------------------------------
    def _names(self) -> None:
        """``self.new[(module, top-level name)]``: its name in the generated files (renamed on a clash)."""
        owners = defaultdict(dict)  # name -> {what it is: [modules]}
        for m, units in self.units.items():
            for n in self._binds(units):
                owners[n][m] = [m]
        for (m, n), (what, _, _) in self.hoisted.items():
            owners[n].setdefault("import " + what, []).append(m)
        for n in {STUB_BASE, "_LeftOut"} & set(owners):
            raise BundleError(f"{n} is reserved for the generated code; rename it in {list(owners[n])}")
        self.new, taken = {}, set(owners)
        for n, by_what in owners.items():
            if len(roots := [w for w, ms in by_what.items() if set(ms) & set(self.roots)]) > 1:
                raise BundleError(f"{n!r} is two different things in {self.roots}; rename one")
            for what, ms in by_what.items():
                new = n
                if len(by_what) > 1 and what not in roots:
                    flat = ms[0].removeprefix(self.top + ".").replace(".", "_")
                    new = f"{'_' if n.startswith('_') else ''}{flat}__{n.lstrip('_')}"
                    if new in taken:
                        raise BundleError(f"cannot rename {n!r} of {ms[0]}: {new!r} exists too")
                    taken.add(new)
                self.new.update({(m, n): new for m in ms})

    def _resolve(self, m: str, n: str, depth: int = 0) -> tuple[str, str] | None:
        """``("name", generated name)``, ``("module", module)`` or None (not a top-level name of ``m``)."""
        if (m, n) in self.new:
            return "name", self.new[(m, n)]
        if n not in self.imported[m] or depth > 50:
            return None
        t, attr = self.imported[m][n]
        if attr is not None and (r := self._resolve(t, attr, depth + 1)) is None:
            raise BundleError(f"{m} imports {attr!r} from {t}, which does not define it at top level")
        return ("module", t) if attr is None else r

    def _lookup(self, name: str, stack: list[_Scope]):
        for i, s in enumerate(reversed(stack)):
            if s.kind == "module" or name in s.glob:
                return self._resolve(self.mod.name, name)
            if (s.kind != "class" or i == 0) and (name in s.alias or name in s.bound):
                return s.alias.get(name)  # (a class body does not enclose the functions in it)
        return None

    def _edit(self, node: ast.AST, old: str, new: str, col: int | None = None) -> None:
        self.cur.add(new)
        if old != new:
            c = node.col_offset if col is None else col
            self.edits[self.mod.name].append((node.lineno, c, c + len(old.encode()), old, new))

    def _scope(self, node: ast.AST) -> _Scope:
        s = _Scope("class" if isinstance(node, ast.ClassDef) else "function")
        body = [node.body] if isinstance(node, ast.Lambda) else list(self._kept(node.body))
        if not isinstance(node, ast.ClassDef):
            a = node.args
            s.bound = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x}
        s.bound |= self._binds(b for b in body if isinstance(b, ast.stmt))
        todo = [b for b in body if b is not _RAISE]
        while todo:
            if isinstance(n := todo.pop(), (ast.Global, ast.Nonlocal)):
                (s.glob if isinstance(n, ast.Global) else s.bound).update(n.names)
            elif not isinstance(n, (*_FUNCS, *_COMPS)):
                todo += self._children(n)
        for imp in self.mod.imports:  # lazy imports of the package: their names resolve at module scope
            if imp.scope is node and self.fate.get(id(imp.node)) == _DROP:
                s.alias.update({b: ("module", t) if a is None else self._resolve(t, a) for t, a, b in imp.items})
        s.bound -= s.glob | set(s.alias)
        return s

    def _visit(self, node: ast.AST, stack: list[_Scope]) -> None:
        """Record the renames (``self.edits``) and references (``self.cur``) of the kept code under ``node``."""
        where = self.mod.where(node) if hasattr(node, "lineno") else self.mod.name
        if isinstance(node, _COMPS):  # a scope of its own, but for its first iterable
            gens, inner = node.generators, _Scope("function")
            self._visit(gens[0].iter, stack)
            inner.bound = {n.id for g in gens for n in ast.walk(g.target) if isinstance(n, ast.Name)}
            parts = [g.target for g in gens] + [i for g in gens for i in g.ifs] + [g.iter for g in gens[1:]]
            for p in parts + ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
                self._visit(p, stack + [inner])
        elif isinstance(node, _FUNCS):
            outer = list(getattr(node, "decorator_list", []))
            if isinstance(node, ast.ClassDef):
                outer += node.bases + [k.value for k in node.keywords]
            else:
                a = node.args
                outer += a.defaults + a.kw_defaults + [getattr(node, "returns", None)] + [
                    x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x]
            any(self._visit(x, stack) for x in outer if x is not None)
            if len(stack) == 1 and isinstance(node, _DEFS):
                line = self.mod.lines[node.lineno - 1].encode()
                if (hit := re.search(rb"(?:def|class)\s+(" + node.name.encode() + rb")\b", line)) is None:
                    raise BundleError(f"{where}: write 'def/class {node.name}' on one line")
                self._edit(node, node.name, self._resolve(self.mod.name, node.name)[1], hit.start(1))
            scope = self._scope(node)
            for x in [node.body] if isinstance(node, ast.Lambda) else self._kept(node.body):
                if x is not _RAISE:
                    self._visit(x, stack + [scope])
        elif isinstance(node, ast.Call) and (f := getattr(node.func, "id", getattr(node.func, "attr", ""))) in _DYNAMIC:
            arg = getattr(node.args[0], "value", "") if node.args else ""
            if f not in ("find_spec", "find_loader") or str(arg).split(".")[0] not in self.optional or \
                    node.lineno != node.end_lineno:
                raise BundleError(f"{where}: a dynamic import cannot be bundled; import statically")
            self._edit(node, ast.get_source_segment(self.mod.source, node), "None")  # "not installed"
        elif isinstance(node, ast.Name):
            if (r := self._lookup(node.id, stack)) and r[0] == "module":
                raise BundleError(f"{where}: module {r[1]} used as a value; use only its.names")
            if r:
                self._edit(node, node.id, r[1])
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                r := self._lookup(node.value.id, stack)) and r[0] == "module":
            new = self._resolve(r[1], node.attr)
            if new is None or new[0] == "module" or node.lineno != node.end_lineno:
                raise BundleError(f"{where}: cannot bundle {node.value.id}.{node.attr}; import the name itself")
            self._edit(node, ast.get_source_segment(self.mod.source, node), new[1])
        elif isinstance(node, (ast.Global, ast.Import, ast.ImportFrom)):  # names bound otherwise than by a Name
            names = node.names if isinstance(node, ast.Global) else [] if len(stack) > 1 else self._binds([node])
            if any((r := self._resolve(self.mod.name, n)) and r[1] != n for n in names):
                raise BundleError(f"{where}: {names} clash with another module's names; rename them")
        else:
            any(self._visit(child, stack) for child in self._children(node))

    def _shake(self) -> None:
        """``self.keep``: the ids of the top-level statements kept (those of the roots, those not
        plain definitions, the definitions these reference, transitively, and their docstrings)."""
        units = [(m, s) for m, ss in self.units.items() for s in ss]
        self.defs = {id(s): {self.new[(m, n)] for n in self._binds([s])} for m, s in units}
        doc = {id(s): id(prev) for ss in self.units.values() for prev, s in itertools.pairwise(ss)
               if isinstance(s, ast.Expr) and isinstance(getattr(s.value, "value", None), str)}
        self.keep = {id(s) for m, s in units if m in self.roots or not (
            id(s) in doc or (isinstance(s, _DEFS) and not s.decorator_list) or (isinstance(s, ast.AnnAssign)
            and s.simple) or (isinstance(s, ast.Assign) and all(isinstance(t, ast.Name) for t in s.targets)))}
        while more := {id(s) for _, s in units if id(s) not in self.keep and self.defs[id(s)] & set().union(
                *(self.refs[i] for i in self.keep))}:
            self.keep |= more
        self.keep |= {i for i, prev in doc.items() if prev in self.keep}  # a docstring stays with its statement

    # -- text -------------------------------------------------------------------------------------
    def _text(self, mod: _Mod) -> None:
        """``self.lines``: ``mod``'s lines with the renames applied."""
        lines = [ln.encode() for ln in mod.lines]
        for ln, a, b, old, new in sorted(set(self.edits[mod.name]), key=lambda e: (e[0], -e[1])):
            if lines[ln - 1][a:b] != old.encode():
                raise BundleError(f"{mod.path}:{ln}: cannot find {old!r} to rename it")
            lines[ln - 1] = lines[ln - 1][:a] + new.encode() + lines[ln - 1][b:]
        self.mod, self.lines = mod, [ln.decode() for ln in lines]
        self.in_str = {i for n in ast.walk(mod.tree) if isinstance(n, (ast.Constant, ast.JoinedStr))
                       for i in range(n.lineno + 1, (n.end_lineno or n.lineno) + 1)}

    def _lines(self, a: int, b: int, dedent: int) -> list[str]:
        return [(ln if i in self.in_str else ln[min(dedent, len(ln) - len(ln.lstrip(" "))):]).rstrip()
                for i, ln in enumerate(self.lines[a - 1:b], a)]

    def _emit(self, stmts: list, indent: int) -> list[str]:
        """The lines of a block whose statements are to start at column ``indent``."""
        out, prev = [], None
        for s in self._kept(stmts):
            if s is _RAISE:
                why = f"left out of this file: code that needs {'/'.join(self.optional)}"
                return out + [" " * indent + f"raise ModuleNotFoundError({why!r})"]
            if prev is not None and _start(s) <= prev:
                continue  # on a line already written
            if self.mod.lines[_start(s) - 1].encode()[:s.col_offset].strip():
                raise BundleError(f"{self.mod.where(s)}: put the statement on lines of its own to bundle it")
            if prev is not None:  # the comments just above s
                gap = self._lines(prev + 1, _start(s) - 1, s.col_offset - indent)
                code = [i for i, g in enumerate(gap) if g.strip() and not g.strip().startswith("#")]
                out += gap[code[-1] + 1:] if code else gap
            out, prev = out + self._copy(s, s.col_offset - indent), s.end_lineno
        return out or [" " * indent + "pass"]

    def _copy(self, s: ast.stmt, dedent: int) -> list[str]:
        """The lines of statement ``s``, ``dedent`` columns to the left, its blocks rewritten."""
        blocks = [b for f in s._fields for b in ([h.body for h in getattr(s, f)] if f in ("handlers", "cases")
                                                 else [getattr(s, f)]) if isinstance(b, list) and b
                  and isinstance(b[0], ast.stmt)]
        if not any(id(n) in self.fate for b in blocks for st in b for n in ast.walk(st)):
            return self._lines(_start(s), s.end_lineno, dedent)
        out, line = [], _start(s)
        for b in blocks:
            if _start(b[0]) <= line:
                raise BundleError(f"{self.mod.where(b[0])}: put the block on lines of its own to bundle it")
            out += self._lines(line, _start(b[0]) - 1, dedent) + self._emit(b, b[0].col_offset - dedent)
            line = b[-1].end_lineno + 1
        return out + self._lines(line, s.end_lineno, dedent)

    def source(self, file: str, title: list[str]) -> str:
        """The text of ``file``: the comment lines ``title``, the modules it holds, the docstring of
        its root, its imports (those of the earlier files' names relative), its code."""
        mods, body, left_out, used, srcs = self.files[file], [], [], set(), []
        for m in mods:
            self._text(self.mods[m])
            section, prev = [], None
            for s in (s for s in self.units[m] if id(s) in self.keep):
                used |= self.refs[id(s)]
                new, a = self.new[(m, s.name)] if isinstance(s, _DEFS) else None, _start(s)
                while a > 1 and self.lines[a - 2].strip().startswith("#"):
                    a -= 1  # with the comments just above it
                if self.fate.get(id(s)) == _STUB:
                    left_out.append(new)
                    text = [f"class {new}({STUB_BASE}):", '    """Left out: the config does not use it."""']
                else:
                    text = self._lines(a, _start(s) - 1, 0) + self._copy(s, s.col_offset)
                    if isinstance(s, ast.ClassDef) and new != s.name:
                        text.append(f"{new}.__name__ = {new}.__qualname__ = {s.name!r}")
                if prev is not None:
                    section += ["", ""] if isinstance(s, _DEFS) or isinstance(prev, _DEFS) else [""] * (
                        a > prev.end_lineno + 1)
                section, prev = section + text, s
            if section:
                body, srcs = body + ["", "", f"# ---- {m} ----"] + section, srcs + [m]
        head = list(title) + ["#   " + ln for ln in _wrap(", ".join(srcs), 96)]
        if left_out:
            head += ["# Left out, as the model's config does not use them:"]
            head += ["#   " + ln for ln in _wrap(", ".join(sorted(left_out)), 96)]
        head += ["# Do not edit: generate it again instead."]
        if (doc := self.docs.get(mods[-1])) is not None:
            head += self.mods[mods[-1]].lines[doc.lineno - 1:doc.end_lineno]
        head += ["from __future__ import annotations"] if self.future & set(mods) else []
        imports, froms = set(), defaultdict(list)
        for (m, n), (_, s, a) in self.hoisted.items():
            if (new := self.new[(m, n)]) not in used:
                continue
            if isinstance(s, ast.ImportFrom):
                froms[s.module].append(a.name if a.name == new else f"{a.name} as {new}")
            elif a.asname is None and new != n:
                raise BundleError(f"{self.mods[m].where(s)}: 'import {a.name}' clashes with another {n}; use 'as'")
            else:
                imports.add(f"import {a.name}" + (f" as {new}" if a.asname or new != n else ""))
        head += [""] + sorted(imports) + [ln for mod in sorted(froms) for ln in _from_lines(mod, froms[mod])]
        for earlier in list(self.files)[:list(self.files).index(file)]:
            names = {d for m in self.files[earlier] for s in self.units[m] if id(s) in self.keep
                     for d in self.defs[id(s)]}
            head += _from_lines("." + earlier.removesuffix(".py"), sorted(used & names))
        if left_out:
            head += _STUB_CODE.replace("STUB_BASE", STUB_BASE).replace("TOP", self.top).splitlines()
        return "\n".join(head + body) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    out = [""]
    for word in text.split(" "):
        if out[-1] and len(out[-1]) + len(word) >= width:
            out.append("")
        out[-1] += (" " if out[-1] else "") + word
    return out


def _from_lines(module: str, names: list[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    one = f"from {module} import {', '.join(names)}"
    return [] if not names else [one] if len(one) <= 110 else [f"from {module} import ("] + [
        "    " + ln for ln in _wrap(", ".join(names) + ")", 100)]
