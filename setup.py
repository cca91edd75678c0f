"""Build hook: a wheel (`pip install .`) gets the engine core compiled with mypyc; the rest is pyproject.

- Editable installs (`pip install -e .`) stay pure Python on purpose: a compiled module next to
  engine/*.py would be imported instead of the source and silently hide every later edit. So no
  compiled module is ever written into the source tree: mypyc compiles a staged copy under build/.
- Without mypyc, or when the C build fails (no compiler), the wheel holds the pure-Python engine and a
  warning is printed; it is all or nothing, never a partly compiled engine.
- `TRADEENGINE_PURE=1` forces a pure build.
`COMPILED_MODULES` (the engine modules on the hot paths, except validation.py, which must see a command's
fields untyped: see ops/bench/core.py) is kept equal to ops/bench/core.py's ACCELERATED_MODULES by a
test. At run time `trade-engine bench core` prints which build is imported (`engine: mypyc` or `python`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
COMPILED_MODULES = ("book", "stops", "liquidity", "matching", "pair_state", "order", "lifecycle", "funds")
STAGING = ROOT / "build" / "mypyc"
BUILDS_BINARIES = {"bdist_wheel", "build", "build_ext", "install"}


class OptionalBuildExt(build_ext):
    """Build the mypyc extensions if possible; otherwise leave the pure-Python engine in the wheel."""

    def run(self) -> None:
        if self.inplace:  # a compiled module beside engine/*.py would hide later edits to the source
            print("warning: the engine is never compiled in place; skipping build_ext", file=sys.stderr)
            return
        try:
            super().run()
        except Exception as exc:  # any compiler failure means: ship pure Python
            for ext in self.extensions:  # all or nothing: a shim without its shared library cannot import
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []
            print(f"warning: mypyc build of the engine failed, shipping pure Python: {exc}", file=sys.stderr)


def compiled_engine() -> list[Any]:
    """Return the engine's mypyc extensions, or [] for a pure-Python build."""
    commands = set(sys.argv[1:])
    if not commands & BUILDS_BINARIES:
        return []  # metadata, sdist, and editable installs (editable_wheel / develop) stay pure
    # an in-tree build reuses build/lib*: drop compiled modules of earlier builds, which a pure (or
    # smaller) build would otherwise ship next to newer sources
    for stale in ROOT.glob("build/lib*/tradeengine/engine/*.so"):
        stale.unlink()
    if os.environ.get("TRADEENGINE_PURE") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("warning: mypyc is not available, installing the pure-Python engine", file=sys.stderr)
        return []
    # mypyc names modules after their path: compile a staged copy laid out as tradeengine/engine/.
    package = STAGING / "src" / "tradeengine" / "engine"
    shutil.rmtree(STAGING / "src", ignore_errors=True)
    package.mkdir(parents=True)
    for path in sorted((ROOT / "engine").glob("*.py")):
        shutil.copy2(path, package / path.name)
    here = os.getcwd()
    os.chdir(STAGING / "src")
    try:
        return mypycify(
            ["--explicit-package-bases", *(f"tradeengine/engine/{name}.py" for name in COMPILED_MODULES)],
            target_dir=str(STAGING / "c"),
            group_name="tradeengine.engine.native",
        )
    except BaseException as exc:  # mypyc refused the code (e.g. type errors): ship pure Python
        print(f"warning: mypyc could not compile the engine, installing pure Python: {exc!r}",
              file=sys.stderr)
        return []
    finally:
        os.chdir(here)


setup(ext_modules=compiled_engine(), cmdclass={"build_ext": OptionalBuildExt})
