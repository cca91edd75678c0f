"""PollingActor's scheduling (actors/polling.py), with a pass that only records when it ran: nudges
gather into one pass per ``nudge_interval``, a backlog is worked off at once, and an idle table is looked
at every ``idle_interval``."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tradeengine.actors.polling import Nudge, Outages, PollingActor
from tradeengine.actors.supervised import ChildLink
from tradeengine.actors.supervision import Backoff

WAIT = 10.0


class Passes:
    """The monotonic start of each pass, shared with the test."""

    def __init__(self) -> None:
        self.passes: list[float] = []
        self.ran = threading.Condition()


class Recorder(PollingActor):
    """Records each pass in `record`; the first `more` passes report more work waiting."""

    what = "recorder"

    def __init__(self, record: Passes, *, nudge_interval: float, idle_interval: float = 5.0,
                 more: int = 0) -> None:
        super().__init__(ChildLink("recorder", 1, sink=lambda notice: None, is_current=lambda n, i: True),
                         log=logging.getLogger("test.polling"), outages=Outages(),
                         idle_interval=idle_interval, backoff=Backoff(initial=0.1, factor=2.0, cap=1.0),
                         nudge_interval=nudge_interval)
        self._record = record
        self._more = more

    def pass_once(self) -> bool:
        with self._record.ran:
            self._record.passes.append(time.monotonic())
            self._record.ran.notify_all()
        if self._more:
            self._more -= 1
            return True
        return False


def wait_passes(recorder: Passes, count: int) -> list[float]:
    with recorder.ran:
        assert recorder.ran.wait_for(lambda: len(recorder.passes) >= count, WAIT), recorder.passes
        return list(recorder.passes)


@pytest.fixture
def start() -> Iterator[Any]:
    refs: list[Any] = []

    def started(**options: Any) -> tuple[Any, Passes]:
        record = Passes()
        refs.append(Recorder.start(record, **options))
        wait_passes(record, 1)  # the pass on start
        return refs[-1], record

    yield started
    for ref in refs:
        ref.stop()


def test_nudges_within_the_interval_gather_into_one_pass_at_its_end(start: Any) -> None:
    ref, recorder = start(nudge_interval=0.3)
    first = recorder.passes[0]
    for _ in range(20):
        ref.tell(Nudge())
    passes = wait_passes(recorder, 2)
    time.sleep(0.4)  # no further pass comes of those nudges
    assert recorder.passes == passes and len(passes) == 2
    assert passes[1] - first >= 0.3 * 0.9


def test_a_nudge_after_the_interval_runs_a_pass_at_once(start: Any) -> None:
    ref, recorder = start(nudge_interval=0.5)
    time.sleep(0.6)
    nudged = time.monotonic()
    ref.tell(Nudge())
    passes = wait_passes(recorder, 2)
    assert passes[1] - nudged < 0.25  # not another nudge_interval: at once (a slow machine's margin)


def test_without_an_interval_every_nudge_runs_a_pass_at_once(start: Any) -> None:
    ref, recorder = start(nudge_interval=0.0)
    for count in range(2, 5):
        ref.tell(Nudge())
        wait_passes(recorder, count)


def test_a_backlog_is_worked_off_without_waiting_for_the_interval(start: Any) -> None:
    began = time.monotonic()
    _, recorder = start(nudge_interval=1.0, more=5)  # the pass on start and five more find work waiting
    passes = wait_passes(recorder, 6)
    assert passes[-1] - began < 1.0


def test_an_idle_table_is_looked_at_every_idle_interval(start: Any) -> None:
    _, recorder = start(nudge_interval=0.01, idle_interval=0.1)
    passes = wait_passes(recorder, 3)
    assert all(later - earlier >= 0.1 * 0.9 for earlier, later in itertools.pairwise(passes))
