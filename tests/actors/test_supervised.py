"""A supervised actor that ends refuses the told messages still queued, so no caller waits in vain."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest

from tradeengine.actors.supervised import ChildLink, SupervisedActor


@dataclass(frozen=True)
class Job:
    reply: Future[str]
    crash: bool = False


class Worker(SupervisedActor):
    """Answers each Job through its future; a crashing Job waits for `release`, then raises."""

    def __init__(self, link: ChildLink, release: threading.Event) -> None:
        super().__init__(link)
        self.release = release

    def on_receive(self, message: Any) -> Any:
        if message.crash:
            self.release.wait(5)
            raise RuntimeError("injected crash")
        message.reply.set_result("done")
        return None

    def refuse_queued(self, message: Any) -> bool:
        if isinstance(message, Job):
            message.reply.set_exception(RuntimeError("refused: the worker ended"))
            return True
        return False


def _link() -> ChildLink:
    return ChildLink("worker", 1, sink=lambda notice: None, is_current=lambda name, number: True)


def test_told_messages_queued_behind_a_crash_are_refused_at_once() -> None:
    release = threading.Event()
    worker = Worker.start(_link(), release)
    first: Future[str] = Future()
    worker.tell(Job(first))
    assert first.result(timeout=5) == "done"
    worker.tell(Job(Future(), crash=True))
    queued = [Future() for _ in range(3)]
    for reply in queued:
        worker.tell(Job(reply))
    release.set()
    for reply in queued:
        with pytest.raises(RuntimeError, match="refused"):
            reply.result(timeout=5)  # without the refusal pykka drops them and this times out
    assert not worker.is_alive()
