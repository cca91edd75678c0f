"""The optional mypyc build of the engine passes the same engine suite (slow: it compiles first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tradeengine.ops.bench.core import build_accelerated

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_mypyc_build_passes_the_engine_suite(tmp_path: Path) -> None:
    src = build_accelerated(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(src))
    probe = subprocess.run(
        [sys.executable, "-c", "import tradeengine.engine.matching as m; print(m.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert not probe.stdout.strip().endswith(".py"), probe.stdout
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "tests/engine"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert suite.returncode == 0, suite.stdout[-3000:]
