"""The core benchmark runs end to end on a tiny workload and reports its figures as JSON."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tradeengine.ops.bench import core

ROOT = Path(__file__).resolve().parents[2]


def test_bench_core_prints_its_figures_as_json_on_the_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert core.main(["--json", "--commands", "2000", "--runs", "2", "--seed", "5"]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last_line)
    assert {"commands_per_sec", "us_per_command", "bytes_per_resting_order"} <= set(result)
    assert result["commands"] == 2000 and result["runs"] == 2
    assert result["commands_per_sec"] > 0 and result["bytes_per_resting_order"] > 0


def test_bench_core_refuses_a_non_positive_command_count() -> None:
    with pytest.raises(SystemExit):
        core.main(["--commands", "0"])


def test_the_installed_build_compiles_the_same_modules_as_the_accelerated_bench() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    (listed,) = (
        ast.literal_eval(node.value) for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED_MODULES"
    )
    assert tuple(listed) == core.ACCELERATED_MODULES


def test_an_editable_install_of_the_project_stays_pure_python(tmp_path: Path) -> None:
    # a compiled module next to engine/*.py would be imported instead of the edited source
    hook = f"from setuptools import build_meta; build_meta.build_editable({str(tmp_path)!r})"
    build = subprocess.run(
        [sys.executable, "-c", hook],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if name.endswith(".so")]
    assert not list((ROOT / "engine").glob("*.so"))
