"""The rewriting rules of :mod:`spikelm.hub.bundler`, on the AST of the modules it bundles.

:class:`_Rules` (a base of :class:`~spikelm.hub.bundler.Bundle`, on the state it collects)
decides what each statement becomes and under which name:

* optional packages (Triton) left out as if not installed: an import that fails without them is
  replaced by its ``try``'s handler or by a raise (:data:`_RAISE`); ``find_spec`` of one by
  ``None`` (:meth:`_Rules._fates`, :meth:`_Rules._visit`);
* dead code dropped: the package's own imports, ``__all__``, the other modules' docstrings,
  statements after a return/raise/break/continue (:meth:`_Rules._kept`), top-level definitions
  nothing kept references (:meth:`_Rules._shake`), and, given a config, the ``nn.Module``
  classes its model does not build, which become stubs (:meth:`_Rules._stubs`);
* name clashes between modules renamed ``<module path>__<name>`` (:meth:`_Rules._names`), and the
  renames and references of the kept code recorded (:meth:`_Rules._visit`).

Raises :class:`~spikelm.hub.bundle_parse.BundleError` for what these rules cannot bundle: ``import
*``, a dynamic import, a module object used other than as ``module.name``, a name clash a rename
cannot fix (or between root modules, or with a reserved name), a name imported from a module that
does not define it, a statement that shares its lines, a ``def``/``class`` not on one line.
"""
from __future__ import annotations

import ast
import importlib
import itertools
import re
from collections import defaultdict

from .bundle_parse import _DEFS, _FUNCS, BundleError, _handler, _Imp, _Mod

STUB_BASE = "_NotInThisExport"
"""The base class of the stubs in the generated code (a reserved name)."""
_RAISE = ast.Raise()  # stands for an import replaced by a raise of ModuleNotFoundError
_DROP, _HOIST, _STUB = "drop", "hoist", "stub"
_ENDS = (ast.Return, ast.Raise, ast.Break, ast.Continue)
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_DYNAMIC = {"import_module", "__import__", "find_spec", "find_loader"}


class _Scope:
    def __init__(self, kind: str):
        self.kind, self.bound, self.glob, self.alias = kind, set(), set(), {}


class _Rules:
    """The rules, as methods of :class:`~spikelm.hub.bundler.Bundle`, which sets the state they use:
    ``roots``, ``optional``, ``top``, ``mods`` (:class:`_Mod` by name), ``needs``, ``units``,
    ``fate``, ``future``, ``docs``, ``hoisted``, ``imported`` (filled by :meth:`_fates`), ``new``
    (:meth:`_names`), ``edits``, ``refs``, ``cur`` and ``mod`` (the module being visited), ``keep``
    and ``defs`` (:meth:`_shake`)."""

    def _fails(self, imp: _Imp) -> bool:
        """Whether import ``imp`` fails without the optional packages."""
        return imp.kind == "optional" or (imp.kind == "own" and any(t in self.needs for t, _, _ in imp.items))

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
