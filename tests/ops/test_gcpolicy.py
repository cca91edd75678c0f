"""The engine's processes run Python's garbage collector as ops/gcpolicy.py says: what exists once a
process is built is frozen, and the youngest generation runs after TRADE_ENGINE_GC_THRESHOLD new objects."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tradeengine.ops import server
from tradeengine.ops.gcpolicy import tune_collector
from tradeengine.ops.settings import Settings


@pytest.fixture
def collector() -> Iterator[None]:
    """Give the test process its collector back as it was."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_it_freezes_what_exists_and_sets_only_the_youngest_threshold(collector: None) -> None:
    gc.unfreeze()
    _, middle, oldest = gc.get_threshold()
    tune_collector(12_345)
    assert gc.get_threshold() == (12_345, middle, oldest)
    assert gc.get_freeze_count() > 1000  # the loaded modules and everything else alive
    assert gc.isenabled()


def test_cycles_made_afterwards_are_still_collected_by_the_collector_itself(collector: None) -> None:
    tune_collector(100)  # a low threshold, so that the allocations below run the young generation

    class Node:
        other: Any = None

    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    assert gone() is not None  # a cycle: reference counting alone does not free it
    kept = [[] for _ in range(1_000)]  # 1,000 new tracked objects: the collector runs on its own
    assert gone() is None
    assert len(kept) == 1_000


def test_a_threshold_below_one_is_refused(collector: None) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        tune_collector(0)


def test_the_worker_tunes_its_collector_once_the_app_is_built(
        collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Settings] = []

    def build_worker(settings: Settings, conninfo: str) -> Any:
        built.append(settings)
        assert gc.get_threshold()[0] != 4_321  # not before the parts exist
        return SimpleNamespace(app="the app")

    monkeypatch.setattr(server, "build_worker", build_worker)
    application = server.EngineApplication(Settings(gc_threshold=4_321), "postgresql://unused@127.0.0.1/x")
    assert application.load() == "the app"
    assert built and gc.get_threshold()[0] == 4_321
    assert gc.get_freeze_count() > 0


def test_a_child_process_tunes_its_collector_from_the_engines_environment_and_ignores_stop_signals() -> None:
    # SIGINT and SIGTERM sent to the process group must not end a child before its engine closes stdin
    script = ("import gc, json, logging, os, signal\n"
              "from tradeengine.ops.child import begin_child\n"
              "config = begin_child(logging.getLogger('child'), 'test child')\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "print(json.dumps([config, gc.get_threshold()[0], gc.get_freeze_count()]))\n")
    env = {**os.environ, "TRADE_ENGINE_GC_THRESHOLD": "2222"}
    done = subprocess.run([sys.executable, "-c", script], input=b'{"ok": 1}\n', env=env,
                          capture_output=True, timeout=60, check=True)
    config, threshold, frozen = json.loads(done.stdout.splitlines()[-1])
    assert config == {"ok": 1}
    assert threshold == 2222
    assert frozen > 1000
