"""The writer process's builder thread (`ops.writer_main._build`) and its hand-over to the committer.

No database: the builder reads real frames from a pipe, as from the engine, and the test plays the
committer on the `_Handover` (take a batch, then say it is done). The committing side, against real
PostgreSQL, is in ``tests/actors/test_writer_process.py``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import IO, Any

import pytest

from tradeengine.actors.writer_process import FrameReader, write_data
from tradeengine.ops.writer_main import _build, _Built, _Handover
from tradeengine.storage.facts import Transfer
from tradeengine.storage.facts_wire import FactsDecoder, FactsEncoder

WAIT = 5.0
T0 = 1_795_000_000_000_000  # µs since the Unix epoch (2026-11-19)


def deposit() -> Transfer:
    return Transfer("DEPOSIT", 1001, "USDT", 10**8, T0)


class Builder:
    """A builder thread reading frames from a pipe; `send` writes one frame of `facts` deposits."""

    def __init__(self, max_batch: int) -> None:
        read_fd, write_fd = os.pipe()
        self.stream: IO[bytes] = os.fdopen(write_fd, "wb")
        self.handover = _Handover()
        frames = FrameReader(read_fd, decode=FactsDecoder().decode)
        self.thread = threading.Thread(target=_build, args=(frames, self.handover, max_batch), daemon=True)
        self.thread.start()

    def send(self, facts: int) -> None:
        write_data(self.stream, FactsEncoder().encode([deposit() for _ in range(facts)]))

    def take(self) -> _Built | None:
        """The next batch, as the committer takes it (the committer is then busy with it)."""
        taken: Future[Any] = Future()
        threading.Thread(target=lambda: taken.set_result(self.handover.take()), daemon=True).start()
        batch: _Built | None = taken.result(timeout=WAIT)
        assert batch is None or batch.error is None, batch.error
        return batch


@pytest.fixture
def builder() -> Iterator[Builder]:
    made = Builder(max_batch=100)
    yield made
    made.stream.close()
    made.thread.join(WAIT)


def test_a_frame_is_handed_over_at_once_when_the_committer_waits_for_one(builder: Builder) -> None:
    builder.send(3)
    batch = builder.take()
    assert batch is not None and (batch.frames, batch.facts) == (1, 3)
    assert batch.batch is not None and batch.batch.row_count > 0


def test_every_frame_that_comes_while_a_batch_commits_is_in_the_very_next_batch(builder: Builder) -> None:
    builder.send(1)
    assert builder.take() is not None  # the committer is busy with it from now on ...
    builder.handover.commit_seconds = 5.0  # ... and commits have been taking five seconds
    for _ in range(5):
        builder.send(2)
        time.sleep(0.05)
    builder.handover.done(0.3)
    batch = builder.take()
    assert batch is not None and (batch.frames, batch.facts) == (5, 10)


def test_a_batch_due_before_the_commit_ends_waits_built_and_later_frames_go_to_the_batch_after(
    builder: Builder,
) -> None:
    builder.send(1)
    assert builder.take() is not None
    builder.handover.commit_seconds = 0.1  # the commit should end 0.1 s after it began
    builder.send(1)
    time.sleep(0.5)  # due long ago: that frame's batch is built and waits for the committer
    builder.send(2)
    builder.send(2)
    builder.handover.done(0.3)
    second = builder.take()
    builder.handover.done(0.01)
    third = builder.take()
    assert second is not None and (second.frames, second.facts) == (1, 1)
    assert third is not None and (third.frames, third.facts) == (2, 4)


def test_a_batch_stops_at_max_batch_facts_and_the_frame_that_does_not_fit_opens_the_next() -> None:
    builder = Builder(max_batch=5)
    try:
        builder.send(1)
        assert builder.take() is not None
        builder.handover.commit_seconds = 10.0  # nothing is due before the commit ends
        for size in (2, 2, 3, 1):
            builder.send(size)
        time.sleep(0.4)
        builder.handover.done(0.2)
        sizes = []
        for _ in range(2):
            batch = builder.take()
            assert batch is not None
            sizes.append((batch.frames, batch.facts))
            builder.handover.done(0.01)
        assert sizes == [(2, 4), (2, 4)]
    finally:
        builder.stream.close()
        builder.thread.join(WAIT)


def test_at_the_end_of_its_input_the_builder_hands_over_what_it_has_then_the_end(builder: Builder) -> None:
    builder.send(1)
    assert builder.take() is not None
    builder.handover.commit_seconds = 10.0
    builder.send(2)
    builder.send(2)
    builder.stream.close()
    time.sleep(0.1)
    builder.handover.done(0.2)
    last = builder.take()
    assert last is not None and (last.frames, last.facts) == (2, 4)
    builder.handover.done(0.01)
    assert builder.take() is None
    builder.thread.join(WAIT)
    assert not builder.thread.is_alive()


def test_a_fact_the_builder_cannot_add_fails_its_batch_and_ends_the_builder(builder: Builder) -> None:
    write_data(builder.stream, FactsEncoder().encode([Transfer("DEPOSIT", 1001, "USDT", 0, T0)]))  # amount 0
    taken: Future[Any] = Future()
    threading.Thread(target=lambda: taken.set_result(builder.handover.take()), daemon=True).start()
    batch = taken.result(timeout=WAIT)
    assert batch is not None and isinstance(batch.error, ValueError) and batch.frames == 1
    builder.thread.join(WAIT)
    assert not builder.thread.is_alive()


def test_the_hand_over_is_due_at_once_for_a_waiting_committer_never_while_a_batch_waits() -> None:
    handover = _Handover()
    assert handover.due(0.001) == 0.0  # the committer waits for a batch
    handover.put(None)
    assert handover.due(0.001) is None  # one waits for the committer already
    before = time.perf_counter()
    assert handover.take() is None
    handover.commit_seconds = 0.5
    due = handover.due(0.1)
    assert due is not None and before + 0.4 <= due <= time.perf_counter() + 0.4


def test_the_end_of_input_while_a_built_batch_still_waits_hands_over_both_then_the_end(
    builder: Builder,
) -> None:
    builder.send(1)
    assert builder.take() is not None
    builder.handover.commit_seconds = 0.05
    builder.send(1)
    time.sleep(0.5)  # due: built, waiting for the committer
    builder.send(2)
    builder.stream.close()
    time.sleep(0.1)  # the builder has seen the end of its input with a second batch begun
    builder.handover.done(0.2)
    waiting = builder.take()
    builder.handover.done(0.01)
    last = builder.take()
    builder.handover.done(0.01)
    assert waiting is not None and (waiting.frames, waiting.facts) == (1, 1)
    assert last is not None and (last.frames, last.facts) == (1, 2)
    assert builder.take() is None
