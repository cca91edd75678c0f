"""`PollingActor`: the shape the outbox relay and the wallet settler share.

Both work a table in passes (`pass_once`): a pass follows at once while work waits (`pass_once` returns
True), else after ``idle_interval`` seconds or when a `Nudge` comes (new rows committed), but no sooner
than ``nudge_interval`` seconds after the previous pass began: under load, when every commit nudges,
the nudges then gather several commits into one pass (each pass has fixed costs: its queries, the
broker's round trip), for at most that much delay. A failed pass (`failed(part, error)`) is retried
after an exponential backoff with jitter, nudges ignored meanwhile, and the outage of each part
("broker", "database", "wallet service", ...) is logged once when it begins and once when it ends
(`Outages`, shared by every incarnation so metrics see it). The actor holds nothing the table does not
have: a restarted one resumes from the table.

Scheduling: one `_Poll` per generation; a timer or a nudge starts a new generation, so a stale poll (an
old timer firing late) is ignored, and at most one poll waits in the inbox. The timed waits share one
`_Alarm` thread per incarnation (a `threading.Timer` per wait started a thread per idle pass: hundreds
a second under load, when every commit nudges the relay); it wakes once per deadline it reaches, not
once per pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import pykka

from .supervised import ChildLink, SupervisedActor
from .supervision import Backoff

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Nudge", "Outages", "PollingActor"]


@dataclasses.dataclass(frozen=True, slots=True)
class Nudge:
    """New rows were committed: look at the table now (ignored while backing off after a failure)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Poll:
    """Run a pass (the actor tells itself; stale generations are ignored)."""

    generation: int


class Outages:
    """Which parts are down since when, and how many outages there were. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down: dict[str, float] = {}  # part → monotonic time the outage began
        self.count = 0

    def failed(self, part: str) -> bool:
        """Note that `part` failed; return True when this begins an outage (the one time to log it)."""
        with self._lock:
            if part in self._down:
                return False
            self._down[part] = time.monotonic()
            self.count += 1
            return True

    def recovered(self, part: str) -> float | None:
        """Note that `part` works; return how long its outage lasted (None if there was none)."""
        with self._lock:
            began = self._down.pop(part, None)
        return None if began is None else time.monotonic() - began

    def up(self, part: str) -> bool:
        """True unless `part` is in an outage."""
        return part not in self._down


class _Alarm:
    """One thread that tells an actor `_Poll(generation)` once a deadline passes; one deadline at a time.

    `set` replaces the deadline; the thread is woken only when the new one is earlier than the one it
    waits for (a later one is found when it wakes: one wake-up per idle interval, not one per pass under
    load). `close` ends the thread. The thread starts with the first `set` and is a daemon.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._changed = threading.Condition(threading.Lock())
        self._due: tuple[float, pykka.ActorRef[Any], int] | None = None  # (monotonic time, actor, generation)
        self._wakes_at: float | None = None  # when the thread wakes by itself (None: only when notified)
        self._closed = False
        self._thread: threading.Thread | None = None

    def set(self, ref: pykka.ActorRef[Any], delay: float, generation: int) -> None:
        """Tell `ref` `_Poll(generation)` in `delay` seconds (instead of what was set before)."""
        due = time.monotonic() + delay
        with self._changed:
            if self._closed:
                return
            self._due = (due, ref, generation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._wakes_at is None or due < self._wakes_at:
                self._changed.notify()

    def close(self) -> None:
        """End the thread (at once: it only ever waits)."""
        with self._changed:
            self._closed = True
            self._due = None
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed:
                    now = time.monotonic()
                    if self._due is not None and self._due[0] <= now:
                        break
                    self._wakes_at = None if self._due is None else self._due[0]
                    self._changed.wait(None if self._due is None else self._due[0] - now)
                if self._closed or self._due is None:
                    return
                _, ref, generation = self._due
                self._due = self._wakes_at = None
            with contextlib.suppress(pykka.ActorDeadError):  # stopped meanwhile
                ref.tell(_Poll(generation))


class PollingActor(SupervisedActor):
    """Passes over a table with nudges, an idle interval and backoff (see the module docstring).

    Subclasses set `what` (for logs and timer names) and `waiting` (what waits during an outage, for the
    log), implement `pass_once`, and call `failed` / `recovered`.
    """

    what = "poller"
    waiting = "work waits"

    def __init__(self, link: ChildLink, *, log: logging.Logger, outages: Outages, idle_interval: float,
                 backoff: Backoff, nudge_interval: float = 0.0) -> None:
        super().__init__(link)
        self._log = log
        self.outages = outages
        self._idle_interval = idle_interval
        self._nudge_interval = nudge_interval
        self._last_pass = float("-inf")  # monotonic time the last pass began
        self._backoff = backoff
        self._generation = 0
        self._queued = False  # a _Poll of the current generation is in the inbox
        self._alarm = _Alarm(f"{self.what.replace(' ', '-')}-timer-{link.incarnation}")
        self._failures = 0  # passes failed in a row (the backoff attempt)
        self._soon_generation = -1  # the generation of a pass a nudge scheduled for the end of its interval

    def pass_once(self) -> bool | None:
        """Do one pass; return True when more work waits, False when idle, None after `failed`."""
        raise NotImplementedError

    def shut(self) -> None:
        """Release what the actor holds (the alarm thread; subclasses add theirs)."""
        self._alarm.close()

    # -- lifecycle ----------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Look at the table at once: what an earlier run left goes first."""
        self._wake_now()

    def release(self) -> None:
        """Shut (on a stop and on a crash alike)."""
        self.shut()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """A bug: log it, then shut and report the crash (the supervisor restarts us; we resume from the
        table)."""
        try:
            self._log.error("%s %s crashed; the supervisor restarts it and it resumes from the table",
                            self.what, self.link, exc_info=exception_value)
        finally:
            super().on_failure(exception_type, exception_value, traceback)

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        if isinstance(message, _Poll):
            if message.generation == self._generation:
                self._queued = False
                self._run_pass()
        elif isinstance(message, Nudge):
            if self._failures == 0:
                self._wake_after_nudge()
        else:
            return super().on_receive(message)
        return None

    # -- outcomes -----------------------------------------------------------------------------------

    def _run_pass(self) -> None:
        self._last_pass = time.monotonic()
        more = self.pass_once()
        if more is None:  # failed: the backoff is scheduled
            return
        self._failures = 0
        if more:
            self._wake_now()
        else:
            self._wake_in(self._idle_interval)

    def failed(self, part: str, error: BaseException) -> None:
        """The pass failed on `part`: log the outage once, try again after a jittered backoff."""
        self._failures += 1
        delay = self._backoff.delay(self._failures)
        delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: actors restarting together spread out
        if self.outages.failed(part):
            self._log.warning("%s: the %s is unavailable (%s); %s, retrying with backoff (at most "
                              "every %g s)", self.what, part, error, self.waiting, self._backoff.cap)
        else:
            self._log.debug("%s: the %s is still unavailable (%s); next try in %.2f s", self.what, part,
                            error, delay)
        self._wake_in(delay)

    def recovered(self, part: str) -> None:
        """`part` works: log the end of its outage, if there was one."""
        lasted = self.outages.recovered(part)
        if lasted is not None:
            self._log.warning("%s: the %s is available again after %.1f s; working off the backlog",
                              self.what, part, lasted)

    # -- scheduling ---------------------------------------------------------------------------------

    def _wake_now(self) -> None:
        """Queue a pass behind what is in the inbox (one at a time)."""
        if self._queued:
            return
        self._generation += 1  # the alarm set for the previous generation, if it fires, is ignored
        self._queued = True
        self.actor_ref.tell(_Poll(self._generation))

    def _wake_after_nudge(self) -> None:
        """Queue a pass now, or `nudge_interval` after the last one began if that is later."""
        delay = self._last_pass + self._nudge_interval - time.monotonic()
        if delay <= 0:
            self._wake_now()
        elif not self._queued and self._soon_generation != self._generation:
            self._wake_in(delay)
            self._soon_generation = self._generation  # nudges until that pass add nothing

    def _wake_in(self, delay: float) -> None:
        """Queue a pass in `delay` seconds (a nudge may bring it forward)."""
        self._generation += 1
        self._queued = False
        self._alarm.set(self.actor_ref, delay, self._generation)
