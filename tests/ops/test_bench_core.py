"""The core benchmark runs end to end on a tiny workload and reports its figures as JSON."""

from __future__ import annotations

import json

import pytest

from tradeengine.ops.bench import core


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
