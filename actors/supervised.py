"""What a child knows of its supervisor: a `ChildLink`, and the `SupervisedActor` base that uses it.

A child reports to its supervisor only through its link, and a report never blocks: the supervisor takes
it under a lock held for bookkeeping only, never across a wait or an actor call (see `supervisor.py`),
so a child can report from `on_failure`, `on_stop` or a message handler without risking a cycle.

Every report carries the incarnation that sent it; the supervisor ignores reports from an incarnation
that is no longer the current one, so a late report from a dead incarnation cannot restart its successor.

How a child ends, and what the supervisor hears:

- a `tell`-ed message raises      → pykka calls `on_failure`  → CRASHED (abnormal)
- `report_broken()` in a handler  → the incarnation ends after the current message, queued asks fail
                                    with ActorDeadError (the handles resend them to the successor)
                                    → BROKEN (abnormal), scope "child" or "group"
- the actor is stopped unasked    → pykka calls `on_stop`     → EXITED (normal)
- `on_start` raises               → no hook runs; the supervisor's start ping fails → abnormal
An exception from an `ask`-ed message goes back to the asker and the actor lives on (pykka's rule).
Subclasses overriding `on_failure`/`on_stop` must call `super()`, or their ends go unnoticed until a
handle finds the dead actor (the supervisor then treats it as a crash after a grace period).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pykka

from .supervision import ChildBroken

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["ChildLink", "ChildNotice", "NoticeKind", "Scope", "SupervisedActor"]

Scope = Literal["child", "group"]


class NoticeKind(enum.Enum):
    """How an incarnation ended, as its report says."""

    CRASHED = "crashed"
    BROKEN = "broken"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class ChildNotice:
    """A child's report to its supervisor, stamped with the reporting incarnation."""

    name: str
    incarnation: int
    kind: NoticeKind
    error: BaseException | None = None
    scope: Scope = "child"


class ChildLink:
    """A child's name, its incarnation, and a non-blocking way to report to its supervisor."""

    __slots__ = ("_is_current", "_sink", "failure", "incarnation", "name")

    def __init__(
        self,
        name: str,
        incarnation: int,
        sink: Callable[[ChildNotice], None],
        is_current: Callable[[str, int], bool],
    ) -> None:
        self.name = name
        self.incarnation = incarnation
        self._sink = sink
        self._is_current = is_current
        self.failure: BaseException | None = None
        """What ended the incarnation abnormally, once something did (also an on_start that raised)."""

    def __repr__(self) -> str:
        return f"ChildLink({self.name!r}, incarnation={self.incarnation})"

    def __str__(self) -> str:
        return f"{self.name} #{self.incarnation}"

    def is_current(self) -> bool:
        """Tell whether this incarnation is still the one the supervisor routes to (or is starting)."""
        return self._is_current(self.name, self.incarnation)

    def report_crash(self, error: BaseException | None) -> None:
        """Report that this incarnation died of `error`."""
        self._sink(ChildNotice(self.name, self.incarnation, NoticeKind.CRASHED, error))

    def report_broken(self, error: BaseException, *, scope: Scope = "child") -> None:
        """Report that this incarnation's state cannot be trusted; restart it (or its whole group)."""
        self._sink(ChildNotice(self.name, self.incarnation, NoticeKind.BROKEN, error, scope))

    def report_exit(self) -> None:
        """Report that this incarnation stopped normally."""
        self._sink(ChildNotice(self.name, self.incarnation, NoticeKind.EXITED))


class SupervisedActor(pykka.ThreadingActor):
    """A pykka ThreadingActor that tells its supervisor when it ends. Build it with its `ChildLink`.

    `on_start` is where a child rebuilds its state (e.g. from the database): each incarnation is a fresh
    object, so nothing survives a restart except what on_start loads.
    """

    def __init__(self, link: ChildLink) -> None:
        super().__init__()
        self.link = link

    def release(self) -> None:
        """Let go of what this incarnation holds (a process, a connection); called when it ends, stopped
        or crashed, before the supervisor hears of it. Nothing by default."""

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release, then report the crash (pykka has already marked this actor stopped)."""
        try:
            self.release()
        finally:
            self.link.report_crash(exception_value)

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # pykka's own (it logs the exception and stops the actor) is the only place that sees an
        # exception of on_start: kept on the link, it becomes the supervisor's "last failure".
        self.link.failure = exception_value
        super()._handle_failure(exception_type, exception_value, traceback)

    def on_stop(self) -> None:
        """Release, then report the normal end; a stop the supervisor asked for is not acted on."""
        try:
            self.release()
        finally:
            self.link.report_exit()

    def _actor_loop_teardown(self) -> None:
        # pykka answers queued asks when an actor ends but silently drops queued tells. A told message
        # that carries its own reply future would leave its caller waiting out a timeout: refuse it.
        self.refuse_inbox()
        super()._actor_loop_teardown()

    def refuse_inbox(self) -> None:
        """Offer every queued message to `refuse_queued`; put back the ones it does not take."""
        kept = []
        inbox = self.actor_inbox
        while not inbox.empty():  # this actor's thread is the inbox's only reader: get() cannot block
            envelope = inbox.get()
            if not self.refuse_queued(envelope.message):
                kept.append(envelope)
        for envelope in kept:
            inbox.put(envelope)

    def refuse_queued(self, message: Any) -> bool:
        """Fail a queued message that will never be handled (e.g. its reply future); True if taken."""
        return False

    def report_broken(self, reason: BaseException | str, *, scope: Scope = "child") -> None:
        """End this incarnation after the current message and ask the supervisor to replace it.

        Call it from a message handler (this actor's own thread), e.g. after a failed commit, with
        scope="group" to rebuild every member of this child's group once the group's probe passes.
        Like a crash, on_stop does not run; messages still queued are answered with ActorDeadError,
        which the handles take as "never handled" and resend to the next incarnation. Make it the
        handler's last act: the successor may start while the rest of this handler still runs.
        """
        error = reason if isinstance(reason, BaseException) else ChildBroken(reason)
        # Stop first, as pykka does for a crash, so nobody is routed here once the notice is taken.
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        self.link.report_broken(error, scope=scope)
