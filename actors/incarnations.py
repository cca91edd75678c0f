"""The supervisor's record of one child, and the blocking steps of an incarnation's life.

`ChildRecord` fields are guarded by the supervisor's lock (see `supervisor.py`); the functions here
block (build an incarnation and wait for its on_start, stop one, probe a group) and are called by the
supervisor outside that lock, holding the child's `op_lock` instead.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pykka
from pykka.messages import ProxyGetAttr

from .supervised import ChildLink
from .supervision import ChildExited, ChildFailure, ChildSpec, ChildState, ChildStatus, GroupSpec

__all__ = [
    "ChildRecord", "JobThreads", "build_incarnation", "locked_in_order", "probe_ready", "stop_incarnation",
]

logger = logging.getLogger("tradeengine.actors.supervisor")

# Answered by any pykka actor without reaching on_receive, and only after on_start has returned.
_READY_PING = ProxyGetAttr(attr_path=("actor_urn",))


class ChildRecord:
    """The supervisor's record of one child. Every field is guarded by the supervisor's lock."""

    __slots__ = ("dead_since", "incarnation", "last_failure", "op_lock", "recent", "ref", "restarts",
                 "seq", "spec", "start_error", "starting", "state", "ticket")

    def __init__(self, spec: ChildSpec, seq: int) -> None:
        self.spec = spec
        self.seq = seq  # order of add: start order, and reverse stop order
        self.state = ChildState.STOPPED
        self.incarnation = 0
        self.ref: pykka.ActorRef[Any] | None = None  # the incarnation handles route to, when RUNNING
        self.starting = False  # an incarnation is being built / running on_start
        self.start_error: BaseException | None = None  # what the starting incarnation reported
        self.dead_since: float | None = None  # when a handle first found a RUNNING child's actor dead
        self.restarts = 0
        self.last_failure: ChildFailure | None = None
        self.recent: deque[float] = deque()  # clock times of restarts inside the intensity window
        self.ticket = 0
        self.op_lock = threading.Lock()  # held by the one thread stopping or starting this child

    @property
    def name(self) -> str:
        return self.spec.name

    def bump(self) -> int:
        """Move the ticket on, invalidating every job scheduled before; return the new ticket."""
        self.ticket += 1
        return self.ticket

    def status(self) -> ChildStatus:
        """Describe the child for operators (mailbox: messages waiting in the current actor's inbox)."""
        inbox = self.ref.actor_inbox if self.ref is not None else None
        return ChildStatus(
            name=self.name, state=self.state, incarnation=self.incarnation, restarts=self.restarts,
            mailbox=inbox.qsize() if isinstance(inbox, queue.Queue) else 0,
            last_failure=self.last_failure, group=self.spec.group, policy=self.spec.policy,
        )


def build_incarnation(
    spec: ChildSpec, link: ChildLink,
) -> tuple[pykka.ActorRef[Any] | None, BaseException | None]:
    """Call the factory and wait for the new actor's on_start; return its ref and why it failed, if it did."""
    try:
        ref = spec.factory(link)
    except Exception as exc:
        logger.exception("the factory of %s failed", link)
        return None, exc
    try:
        ref.ask(_READY_PING, timeout=spec.start_timeout)
    except pykka.ActorDeadError as exc:  # on_start raised (pykka logged it) or the actor died at once
        cause = link.failure
        why = "" if cause is None else f": {type(cause).__name__}: {cause}"
        return ref, _caused(ChildExited(f"on_start of {link} failed{why}"), cause or exc)
    except pykka.Timeout as exc:
        late = ChildExited(f"on_start of {link} did not finish within {spec.start_timeout} s")
        return ref, _caused(late, exc)
    return ref, None


def stop_incarnation(ref: pykka.ActorRef[Any] | None, timeout: float) -> None:
    """Stop the actor after the messages already queued, waiting up to `timeout` s for its on_stop."""
    if ref is None or not ref.is_alive():
        return
    try:
        ref.stop(block=True, timeout=timeout)
    except pykka.Timeout:
        logger.warning("%s did not stop within %g s; abandoned (nothing routes to it)", ref, timeout)


def probe_ready(group: GroupSpec) -> bool:
    """Ask the group's readiness probe; a probe that raises means not ready."""
    try:
        return bool(group.ready())
    except Exception:
        logger.warning("readiness probe of group %s raised; not ready", group.name, exc_info=True)
        return False


@contextlib.contextmanager
def locked_in_order(records: Sequence[ChildRecord]) -> Iterator[None]:
    """Hold the op_locks of all `records`, taken in child order (the one lock order: no deadlock)."""
    with contextlib.ExitStack() as stack:
        for record in sorted(records, key=lambda record: record.seq):
            stack.enter_context(record.op_lock)
        yield


class JobThreads:
    """Run each supervisor job (a restart, a group restart, a stop) on its own short-lived daemon thread.

    One thread per job keeps one child's backoff or slow on_start from delaying another's restart;
    restarts are rare, so the threads are few. A job that raises is logged, never propagated.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    def launch(self, label: str, job: Callable[[], None]) -> None:
        """Start `job` now on a thread named `supervisor:<label>`."""
        thread = threading.Thread(target=self._run, args=(job,), name=f"supervisor:{label}", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` s in all for the jobs running now to end."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:
            logger.exception("supervisor job %s failed", threading.current_thread().name)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error
