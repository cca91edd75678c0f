"""The README stays true: its two opening commands, its settings table and the CI script agree."""

from __future__ import annotations

import re
from pathlib import Path

from tradeengine.ops.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _opening_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S)
    assert block, "the README opens with a code block of commands"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_exactly_two_commands_serve_and_test() -> None:
    serve, test = _opening_commands()
    assert "trade-engine serve" in serve
    assert "pytest" in test


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, test = _opening_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines
    assert "export TRADE_ENGINE_REQUIRE_SERVICES=1" in ci_lines


def test_readme_documents_every_setting() -> None:
    text = (ROOT / "README.md").read_text()
    for name, default, _ in Settings.documentation():
        row = re.search(rf"^\| `{name}` \| ([^|]*) \|", text, re.M)
        assert row, f"{name} is missing from the README's configuration table"
        shown = row.group(1).strip().strip("`")
        assert shown == default, f"{name}: README says {shown!r}, the code says {default!r}"
