"""The bundling rules of :mod:`spikelm.hub.bundler` on a small package: dependency order, renames on a
clash, module aliases, the optional package left out (modules, guarded and lazy imports), what
nothing uses dropped, comments kept; clear errors for what cannot be bundled."""
import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from spikelm.hub.bundler import Bundle, BundleError

ROOTS = ("{p}.models.configuration_x", "{p}.models.modeling_x")
PACKAGE = {
    "__init__.py": "",
    "models/__init__.py": "import {p}.fast as _fast  # a package import that the roots never run\n",
    "models/configuration_x.py": '''
        """The config."""
        from ..util import MODES as CFG_MODES


        class XConfig:
            modes = CFG_MODES
        ''',
    "util.py": 'MODES = ("a", "b")\n',
    "fast.py": "import fakeopt\n\n\ndef fast(x):\n    return fakeopt.go(x)\n",
    "helpers.py": '''
        def double(x):
            # doubles it
            return 2 * x
        ''',
    "ops.py": '''
        import math

        from . import helpers
        from .util import MODES as UTIL_MODES

        MODES = ("x",)
        __all__ = ["run"]


        def _impl():
            try:
                from .fast import fast
            except ImportError:
                return None
            return fast


        def available() -> bool:
            try:
                import fakeopt  # noqa: F401
            except ImportError:
                return False
            return True


        def found() -> bool:
            import importlib.util

            return importlib.util.find_spec("fakeopt") is not None


        def run(x, mode="auto"):
            if mode == "fast":
                from .fast import fast
                return fast(x)
            impl = _impl()
            return (helpers.double(x), len(UTIL_MODES)) if impl is None else impl(x)


        def unused():
            return math.pi
        ''',
    "models/modeling_x.py": '''
        """The model."""
        from ..ops import MODES, available, found, run
        from .configuration_x import XConfig


        def forward(x, mode="auto"):
            from ..helpers import double as twice  # a lazy import
            return run(x, mode), available() or found(), MODES, XConfig.modes, twice(1), [MODES for MODES in "c"]
        ''',
}


def make_package(tmp: Path, name: str, files: dict[str, str]) -> tuple[str, ...]:
    for rel, text in files.items():
        f = tmp / name / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text).lstrip("\n").replace("{p}", name))
    return tuple(r.replace("{p}", name) for r in ROOTS)


def generate(tmp: Path, name: str, files: dict[str, str]) -> dict[str, str]:
    sys.path.insert(0, str(tmp))
    try:
        b = Bundle(make_package(tmp, name, files), ("fakeopt",))
        return {f: b.source(f, ["# generated"]) for f in b.files}
    finally:
        sys.path.remove(str(tmp))


def test_rules_on_a_small_package(tmp_path):
    files = generate(tmp_path, "rcpkg_a", PACKAGE)
    assert set(files) == {"configuration_x.py", "modeling_x.py"}
    cfg, mdl = files["configuration_x.py"], files["modeling_x.py"]
    assert cfg.startswith('# generated\n#   rcpkg_a.util, rcpkg_a.models.configuration_x\n')
    assert '"""The config."""' in cfg and 'util__MODES = ("a", "b")' in cfg and "modes = util__MODES" in cfg
    assert "from .configuration_x import XConfig, util__MODES" in mdl  # the earlier file's names, relative
    assert "ops__MODES = (\"x\",)" in mdl and "return run(x, mode), available() or found(), ops__MODES" in mdl
    assert "[MODES for MODES in" in mdl  # a comprehension variable is its own (no rename)
    assert "helpers.double" not in mdl and "double(x), len(util__MODES)" in mdl and "# doubles it" in mdl
    assert "twice(1)" not in mdl and "double(1)" in mdl  # the lazy import resolved at module scope
    assert "fakeopt" not in cfg + mdl.replace("code that needs fakeopt", "")  # no import, no module fast
    assert "def fast" not in mdl and "def unused" not in mdl and "import math" not in mdl and "__all__" not in mdl
    assert "def _impl():\n    return None\n" in mdl and "def available() -> bool:\n    return False\n" in mdl
    assert "return None is not None" in mdl  # find_spec of the optional package: not installed
    assert "        raise ModuleNotFoundError('left out of this file: code that needs fakeopt')\n    impl" in mdl
    gen = tmp_path / "gen" / "rcpkg_a_out"
    gen.mkdir(parents=True)
    (gen / "__init__.py").write_text("")
    for f, text in files.items():
        (gen / f).write_text(text)
    sys.path.insert(0, str(gen.parent))
    try:
        mod = importlib.import_module("rcpkg_a_out.modeling_x")
    finally:
        sys.path.remove(str(gen.parent))
    assert mod.forward(3) == ((6, 2), False, ("x",), ("a", "b"), 2, ["c"])
    with pytest.raises(ModuleNotFoundError, match="needs fakeopt"):
        mod.forward(3, "fast")


@pytest.mark.parametrize("rel, text, message", [
    ("models/configuration_x.py", "import fakeopt\n", r"needs fakeopt to import .*configuration_x.py:1\)"),
    ("util.py", "import importlib\nMODES = importlib.import_module('os')\n", r"util.py:2: a dynamic import"),
    ("util.py", "from .helpers import *\nMODES = 1\n", r"util.py:1: 'from rcpkg_\w+.helpers import \*'"),
    ("helpers.py", "from . import util\nX = util\n", r"helpers.py:2: module rcpkg_\w+.util used as a value"),
    ("models/configuration_x.py", "from ..util import MODES\nforward = MODES\n", r"'forward' is two different"),
    ("util.py", "from .helpers import double; MODES = 1\n", r"util.py:1: put the statement on lines of its own"),
])
def test_what_cannot_be_bundled_fails_clearly(tmp_path, rel, text, message):
    name = f"rcpkg_e{abs(hash((rel, text))) % 10**6}"
    with pytest.raises(BundleError, match=message):
        generate(tmp_path, name, {**PACKAGE, rel: text})
