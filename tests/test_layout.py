"""The package layout holds: every sub-package ships, and ./http never shadows the standard library."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("engine", "actors", "http", "storage", "migrations", "ops")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages_in_tree() -> dict[str, Path]:
    """Every folder holding Python modules below the code folders, by its import name."""
    found = {}
    for top in CODE_FOLDERS:
        for folder in [ROOT / top, *sorted(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
            if "__pycache__" in folder.parts:
                continue
            if any(folder.glob("*.py")) or any(folder.glob("*.sql")):
                relative = folder.relative_to(ROOT).parts
                mapped = (top, *relative[1:])
                found["tradeengine." + ".".join(mapped)] = folder
    return found


def test_every_package_in_the_tree_is_listed_in_pyproject_so_none_drops_out_of_the_wheel() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert set(_packages_in_tree()) <= listed, sorted(set(_packages_in_tree()) - listed)
    assert listed <= set(_packages_in_tree()), sorted(listed - set(_packages_in_tree()))


def test_every_listed_package_is_mapped_to_its_folder() -> None:
    tool = _pyproject()["tool"]["setuptools"]
    mapping = tool["package-dir"]
    for name, folder in _packages_in_tree().items():
        top = name.split(".")[1]
        if name in mapping:
            assert ROOT / mapping[name] == folder
        else:
            assert ROOT / mapping[f"tradeengine.{top}"] / Path(*name.split(".")[2:]) == folder


def test_http_folder_has_no_init_module_because_it_would_shadow_the_standard_library() -> None:
    assert not (ROOT / "http" / "__init__.py").exists()


def test_other_code_folders_are_regular_packages() -> None:
    for folder in _packages_in_tree().values():
        if folder != ROOT / "http":
            assert (folder / "__init__.py").exists(), f"{folder} needs an __init__.py"


def test_standard_library_http_wins_when_the_repo_root_is_the_working_directory() -> None:
    code = "import http.client, falcon, tradeengine.http; import http; print(http.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert str(ROOT) not in result.stdout


def test_a_non_editable_install_imports_every_sub_package(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    site = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (wheel,) = wheels.glob("trade_engine-*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert install.returncode == 0, install.stderr
    # Third-party dependencies come from this environment's site-packages, added as a plain path
    # so that its editable-install hook for tradeengine is NOT activated in the fresh one.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    names = sorted(_packages_in_tree())
    code = (
        "import importlib, importlib.resources, sys\n"
        f"for name in {names!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert all(p.startswith({str(site)!r}) for p in module.__path__), (name, module.__path__)\n"
        "sqls = [f.name for f in importlib.resources.files('tradeengine.migrations').iterdir()\n"
        "        if f.name.endswith('.sql')]\n"
        "assert sqls, 'migrations are missing from the wheel'\n"
        "print('ok', len(sqls))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
