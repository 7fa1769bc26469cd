"""Bundle root modules of a package, with what they import from it, into one self-contained file each.

The engine of :mod:`spikelm.hub.remote_code`, whose docstring gives the rules and the result. It
works on the AST and writes the source text back (comments and layout kept), and is generic in
the package (that of the roots), the roots and the optional third-party packages to do without.

:class:`Bundle` collects the modules the roots import (parsed by :mod:`spikelm.hub.bundle_parse`),
orders them into the files (dependencies first), applies the rules of
:mod:`spikelm.hub.bundle_rules` (what is left out, dropped or renamed) and assembles each file's
text (:meth:`Bundle.source`).

Raises :class:`BundleError` (all cases listed at :func:`spikelm.hub.remote_code.bundle_sources`):
here for a root module that needs an optional package at import time, a module-level import
cycle, a statement or block sharing its lines with code that is removed or rewritten, a name to
rename not found where its AST node is, an ``import x`` (without ``as``) that a clash would
rename; besides those of :mod:`~spikelm.hub.bundle_parse` and :mod:`~spikelm.hub.bundle_rules`.
"""
from __future__ import annotations

import ast
from collections import defaultdict

from .bundle_parse import _DEFS, BundleError, _Imp, _Mod, file_of
from .bundle_rules import _RAISE, _STUB, STUB_BASE, _Rules, _Scope

__all__ = ["STUB_BASE", "Bundle", "BundleError", "file_of"]

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


def _start(s: ast.AST) -> int:
    return min([s.lineno] + [d.lineno for d in getattr(s, "decorator_list", [])])


class Bundle(_Rules):
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
