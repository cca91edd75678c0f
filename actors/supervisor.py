"""Supervision for pykka ThreadingActors: restart policies, backoff, intensity, groups, stable handles.

pykka has no supervision; this adds it. A `Supervisor` owns named children built by factories
(`ChildSpec`); a child that crashes, reports itself broken or ends unasked is restarted per its policy
(permanent / transient / temporary), after an exponential backoff, alone (one-for-one) or with its whole
group (one-for-all, once the group's readiness probe passes), and given up on (state `failed`) when it
needs more than N restarts in T seconds. Callers keep `ChildHandle`s, which always reach the current
incarnation. Operators list, start, stop, restart, add and remove children.

Modules: `supervision` (specs, policies, statuses, events, errors), `supervised` (ChildLink and the
SupervisedActor base), `handles` (ChildHandle), `incarnations` (the per-child record and the blocking
steps: build, stop, probe), this one (the decisions). Every public name is re-exported here.

Threading model (a plain object, not an actor)
----------------------------------------------
- `_cond` (a Condition) guards the directory and every `ChildRecord` field. It is held for bookkeeping
  only: never across a factory call, an ask or stop of an actor, a readiness probe, a hook or a sleep. So a
  child's report, made from its own thread (on_failure, on_stop, a handler), is as good as a `tell`:
  it never waits on another actor and cannot close a wait-for cycle.
- Blocking work (stop an old incarnation, build a new one and wait for its on_start, probe, back off)
  runs outside `_cond`: in the operator's calling thread, or in a short-lived daemon worker thread per
  scheduled restart, so one child's backoff or slow on_start never stalls another child's restart.
- Each child's `op_lock` serializes that blocking work per child: one thread at a time stops or starts
  a given child. Lock order: op_locks in child order (order of `add`), then `_cond`. Nobody takes an
  op_lock while holding `_cond`; actor threads never take an op_lock.
- Each child's `ticket` moves on with every decision about it (a scheduled restart, an operator call,
  being failed with its group, stop_all). A job carries the ticket it was scheduled with and does
  nothing once the ticket has moved on; a job that built an incarnation nobody wants any more stops it.
- Incarnation numbers per name only grow, also across remove/add.

Invariants
----------
1. Handles route only to an incarnation in state RUNNING, i.e. whose on_start has finished (a ping
   asked right after start is answered only after on_start).
2. A report (failure, broken, exit) acts only if it comes from the current incarnation while it is
   RUNNING; reports from older incarnations are ignored (LATE_NOTICE_IGNORED), as are the exits the
   supervisor asked for itself.
3. An old incarnation is stopped (or found dead) before its successor is built, by the same thread
   under the child's op_lock. A stop that times out leaves the old thread behind (pykka cannot kill a
   thread) but nothing routes to it any more. "Dead" means pykka's stopped flag: a crashed or
   broken incarnation may still be finishing on_failure or the handler that called report_broken
   while its successor's on_start runs, so report_broken should be a handler's last act.
4. In a one-for-all restart, members are stopped in reverse child order and started in child order,
   each after the previous one's on_start: add children in dependency order (writer, wallet, pairs);
   a child's on_start may ask only children added before it.

Rules for callers: the operator methods (`add`, `remove`, `start`, `stop`, `restart`, `restart_group`
with wait=True, `stop_all`) block until the work is done; call them from operator/HTTP threads, never
from inside a supervised actor (a child uses `SupervisedActor.report_broken`, or `restart_group` with
wait=False). Stop the system with `stop_all`, not pykka's `ActorRegistry.stop_all` (children stopped
behind the supervisor's back are restarted per policy). Time: `clock` (monotonic) drives the intensity
window, `sleep` the backoff (default: a wait that stop/restart can cut short), `wall_clock` the failure
timestamps; waits for replies use real time.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pykka

from .handles import ChildHandle
from .incarnations import (
    ChildRecord,
    JobThreads,
    build_incarnation,
    locked_in_order,
    probe_ready,
    stop_incarnation,
)
from .supervised import ChildLink, ChildNotice, NoticeKind, Scope, SupervisedActor
from .supervision import (
    ActorTimeout,
    ActorUnavailable,
    Backoff,
    ChildBroken,
    ChildExited,
    ChildFactory,
    ChildFailure,
    ChildSpec,
    ChildState,
    ChildStatus,
    DuplicateChild,
    EventKind,
    GroupSpec,
    Intensity,
    RestartPolicy,
    Strategy,
    SupervisionError,
    SupervisorEvent,
    UnknownChild,
)

__all__ = [
    "ActorTimeout", "ActorUnavailable", "Backoff", "ChildBroken", "ChildExited", "ChildFactory",
    "ChildFailure", "ChildHandle", "ChildLink", "ChildSpec", "ChildState", "ChildStatus",
    "DuplicateChild", "EventKind", "GroupSpec", "Intensity", "RestartPolicy", "Strategy",
    "SupervisedActor", "SupervisionError", "Supervisor", "SupervisorEvent", "UnknownChild",
]

logger = logging.getLogger("tradeengine.actors.supervisor")

# How often a waiting handle re-checks a child that is RUNNING on paper but whose actor is dead.
_DEAD_POLL = 0.02

_Events = list[SupervisorEvent]  # a module alias: inside Supervisor, `list` is the method

_RUNNING, _RESTARTING = ChildState.RUNNING, ChildState.RESTARTING
_STOPPED, _FAILED = ChildState.STOPPED, ChildState.FAILED


class Supervisor:
    """Supervise named pykka children: restart them per policy and keep stable handles to them."""

    def __init__(
        self,
        *,
        groups: Iterable[GroupSpec] = (),
        on_event: Callable[[SupervisorEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        notice_grace: float = 1.0,
        busy_timeout: float = 30.0,
    ) -> None:
        """Create an empty supervisor; no thread starts until a child is added.

        `on_event` is called (outside any lock, from whichever thread acted) for every SupervisorEvent;
        `sleep` replaces the default interruptible backoff wait (tests pass a recorder); `notice_grace`
        is how long a dead SupervisedActor may stay unreported before it is treated as crashed;
        `busy_timeout` bounds how long an operator call waits for another start/stop of the same child.
        """
        self._groups = {group.name: group for group in groups}
        self._on_event = on_event
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._notice_grace = notice_grace
        self._busy_timeout = busy_timeout
        self._cond = threading.Condition()
        self._children: dict[str, ChildRecord] = {}
        self._incarnations: dict[str, int] = {}
        self._seq = itertools.count()
        self._jobs = JobThreads()
        self._shutting_down = False

    # -- directory ------------------------------------------------------------------------------------

    def add(self, spec: ChildSpec) -> ChildHandle:
        """Add a child and start it; return its handle once its on_start has finished.

        If the first start fails, the child stays supervised (restarted per its policy) and
        ActorUnavailable is raised.
        """
        with self._cond:
            if spec.name in self._children:
                raise DuplicateChild(f"a child named {spec.name!r} is already supervised", child=spec.name)
            if spec.group is not None and spec.group not in self._groups:
                raise ValueError(f"{spec.name}: unknown group {spec.group!r}; declare it in groups=...")
            child = ChildRecord(spec, next(self._seq))
            child.state = _RESTARTING
            ticket = child.bump()
            self._children[spec.name] = child
            self._cond.notify_all()
        with self._exclusive(child):
            error = self._spawn(child, ticket, restart=False)
        if error is not None:
            raise ActorUnavailable(f"{spec.name} did not start: {error}", child=spec.name,
                                   state=self.status(spec.name).state) from error
        return ChildHandle(self, spec.name)

    def remove(self, name: str) -> None:
        """Stop the child (its on_stop runs) and forget it; its handles raise ActorUnavailable."""
        child = self._child(name)
        with self._exclusive(child):
            with self._cond:
                child.bump()
                old, child.ref = child.ref, None
                child.state = _STOPPED
                del self._children[name]
                self._cond.notify_all()
            stop_incarnation(old, child.spec.stop_timeout)
        logger.info("removed %s", name)
        self._emit([SupervisorEvent(EventKind.STOPPED, name, child.incarnation)])

    def handle(self, name: str) -> ChildHandle:
        """Return the stable handle of a supervised child (UnknownChild if there is none)."""
        self._child(name)
        return ChildHandle(self, name)

    def status(self, name: str) -> ChildStatus:
        """Return one child's row of `list()`."""
        with self._cond:
            return self._child(name).status()

    def list(self) -> tuple[ChildStatus, ...]:
        """Return every child's state, incarnation, restarts, mailbox size and last failure, in add order."""
        with self._cond:
            return tuple(child.status() for child in self._ordered_locked())

    # -- operator controls ----------------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Start a stopped, failed or restarting child now; return once its on_start has finished.

        A child of a group failed with a one-for-all member gets the whole group rebuilt, as `restart`.
        """
        if not self._restarted_failed_group(name):
            self._replace(name, restart=False)

    def restart(self, name: str) -> None:
        """Replace the child with incarnation+1 (stop, then start); return once on_start has finished.

        Resets a failed child and its restart-intensity window. Raises ActorUnavailable if the new
        incarnation fails to start (it is then restarted per its policy). When a one-for-all member of
        the child's group has failed (so has every member), the child could not run without it: the
        whole group is rebuilt instead (`restart_group`).
        """
        if not self._restarted_failed_group(name):
            self._replace(name, restart=True)

    def _restarted_failed_group(self, name: str) -> bool:
        """Rebuild the child's group if a one-for-all member of it has failed; tell whether it did."""
        group = self._child(name).spec.group
        if group is None:
            return False
        with self._cond:
            failed = [m.name for m in self._members_locked(group)
                      if m.spec.strategy is Strategy.ONE_FOR_ALL and m.state is _FAILED]
        if not failed:
            return False
        logger.warning("%s asked to start: %s of its group %s failed, so the whole group is rebuilt", name,
                       ", ".join(failed), group)
        self.restart_group(group)
        return True

    def stop(self, name: str) -> None:
        """Stop the child (its on_stop runs); it stays stopped until `start` or `restart`."""
        child = self._child(name)
        with self._exclusive(child):
            with self._cond:
                child.bump()
                old, child.ref = child.ref, None
                child.state = _STOPPED
                self._cond.notify_all()
            stop_incarnation(old, child.spec.stop_timeout)
        logger.info("stopped %s #%d", name, child.incarnation)
        self._emit([SupervisorEvent(EventKind.STOPPED, name, child.incarnation)])

    def restart_group(self, group: str, *, wait: bool = True, timeout: float | None = None) -> None:
        """Rebuild every member of `group` (except stopped ones) once the group's probe passes.

        Members stop taking messages at once. With wait=True, return once all are running again, or
        raise ActorUnavailable after `timeout` (default: busy_timeout). Failed members are reset.
        """
        spec = self._groups.get(group)
        if spec is None:
            raise ValueError(f"unknown group {group!r}")
        with self._cond:
            members = [m for m in self._members_locked(group) if m.state is not _STOPPED]
            for member in members:
                member.recent.clear()
            events = self._schedule_group_locked(spec, members, delay=0.0, reason="requested")
        self._emit(events)
        if wait:
            self._await_all_running(members, self._busy_timeout if timeout is None else timeout)

    def stop_all(self, *, timeout: float | None = None) -> None:
        """Stop every child in reverse add order (each on_stop runs, `timeout` s per child at most).

        Restarts are suspended meanwhile: a child that crashes during shutdown stays stopped.
        """
        with self._cond:
            self._shutting_down = True
            order = self._ordered_locked()[::-1]
        try:
            for child in order:
                self._stop_for_shutdown(child, child.spec.stop_timeout if timeout is None else timeout)
            self._jobs.join(timeout=2.0 if timeout is None else timeout)
        finally:
            with self._cond:
                self._shutting_down = False

    # -- used by ChildHandle --------------------------------------------------------------------------

    def _await_running(self, name: str, deadline: float, timeout: float) -> tuple[pykka.ActorRef[Any], int]:
        """Return the running incarnation's ref and number, waiting until `deadline` (monotonic)."""
        events: _Events = []
        try:
            with self._cond:
                while True:
                    child = self._children.get(name)
                    if child is None:
                        raise ActorUnavailable(f"{name} is not supervised (removed)", child=name)
                    poll: float | None = None
                    if child.state is _RUNNING and child.ref is not None:
                        if child.ref.is_alive():
                            return child.ref, child.incarnation
                        events += self._observe_dead_locked(child)
                        if child.state is not _RUNNING:
                            continue
                        poll = _DEAD_POLL
                    elif child.state in (_STOPPED, _FAILED):
                        state = child.state
                        raise ActorUnavailable(f"{name} is {state.value}", child=name, state=state)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        state = child.state
                        raise ActorUnavailable(f"{name} is {state.value}; not running within {timeout} s",
                                               child=name, state=state)
                    self._cond.wait(remaining if poll is None else min(remaining, poll))
        finally:
            self._emit(events)

    # -- reports from children (called from the child's own thread; bookkeeping only) ------------------

    def _receive_notice(self, notice: ChildNotice) -> None:
        events: _Events = []
        with self._cond:
            child = self._children.get(notice.name)
            if child is None or child.incarnation != notice.incarnation:
                logger.info("ignored a late %s report from %s #%d", notice.kind.value, notice.name,
                            notice.incarnation)
                events.append(SupervisorEvent(EventKind.LATE_NOTICE_IGNORED, notice.name, notice.incarnation,
                                              notice.error))
            elif child.state is _RUNNING:
                events += self._handle_end_locked(child, notice.kind, notice.error, notice.scope)
            elif child.starting and notice.error is not None:
                child.start_error = notice.error  # the starting thread records it
            # Otherwise it is an end the supervisor asked for (stop, restart, group restart): nothing to do.
        self._emit(events)

    def _is_current(self, name: str, incarnation: int) -> bool:
        with self._cond:
            child = self._children.get(name)
            return (child is not None and child.incarnation == incarnation
                    and (child.state is _RUNNING or child.starting))

    # -- decisions (under _cond) ----------------------------------------------------------------------

    def _handle_end_locked(self, child: ChildRecord, kind: NoticeKind, error: BaseException | None,
                           scope: Scope) -> _Events:
        """Apply policy, intensity and strategy to the end of the child's current incarnation."""
        abnormal = kind is not NoticeKind.EXITED
        events: _Events = []
        if abnormal:
            child.last_failure = ChildFailure.of(error, at=self._wall_clock(), incarnation=child.incarnation)
            events.append(SupervisorEvent(EventKind.CRASHED, child.name, child.incarnation, error))
        ending = f"{kind.value}" + (f" ({type(error).__name__}: {error})" if error is not None else "")
        if self._shutting_down or not child.spec.policy.restarts_after(abnormal=abnormal):
            logger.warning("%s #%d %s; not restarted (%s)", child.name, child.incarnation, ending,
                           "shutting down" if self._shutting_down else f"policy {child.spec.policy.value}")
            child.bump()
            child.state, child.ref = _STOPPED, None
            self._cond.notify_all()
            return [*events, SupervisorEvent(EventKind.STOPPED, child.name, child.incarnation)]
        if self._exceeds_intensity_locked(child):
            return events + self._fail_locked(child, error)
        delay = child.spec.backoff.delay(len(child.recent))
        group = self._groups.get(child.spec.group) if child.spec.group is not None else None
        if group is not None and (child.spec.strategy is Strategy.ONE_FOR_ALL or scope == "group"):
            logger.warning("%s #%d %s; restarting its group %s", child.name, child.incarnation, ending,
                           group.name)
            members = [m for m in self._members_locked(group.name) if m.state in (_RUNNING, _RESTARTING)]
            return events + self._schedule_group_locked(group, members, delay, reason=child.name)
        logger.warning("%s #%d %s; restarting in %.3g s (%d of %d within %g s)", child.name,
                       child.incarnation, ending, delay, len(child.recent), child.spec.intensity.max_restarts,
                       child.spec.intensity.within)
        ticket = child.bump()
        child.state = _RESTARTING
        self._cond.notify_all()
        job = functools.partial(self._restart_child_job, child, ticket, delay)
        self._jobs.launch(f"restart:{child.name}", job)
        return events

    def _exceeds_intensity_locked(self, child: ChildRecord) -> bool:
        """Count one more restart in the child's window; tell whether that is one too many."""
        now, window = self._clock(), child.spec.intensity
        while child.recent and child.recent[0] <= now - window.within:
            child.recent.popleft()
        child.recent.append(now)
        return len(child.recent) > window.max_restarts

    def _fail_locked(self, child: ChildRecord, error: BaseException | None) -> _Events:
        """Give up on the child (and on its group if it is one-for-all) until an operator restarts it."""
        members = [child]
        if child.spec.group is not None and child.spec.strategy is Strategy.ONE_FOR_ALL:
            members = [m for m in self._members_locked(child.spec.group) if m.state is not _STOPPED]
        events = []
        for member in members:
            member.bump()
            old, member.ref = member.ref, None
            member.state = _FAILED
            if old is not None and old.is_alive():
                self._jobs.launch(f"stop:{member.name}", functools.partial(self._stop_job, member, old))
            logger.error("%s #%d failed: more than %d restarts within %g s%s; not restarted until an "
                         "operator asks", member.name, member.incarnation, child.spec.intensity.max_restarts,
                         child.spec.intensity.within, "" if member is child else f" (group of {child.name})")
            events.append(SupervisorEvent(EventKind.FAILED, member.name, member.incarnation, error))
        self._cond.notify_all()
        return events

    def _schedule_group_locked(self, group: GroupSpec, members: Sequence[ChildRecord], delay: float,
                               *, reason: str) -> _Events:
        tickets = {member.name: member.bump() for member in members}
        for member in members:
            member.state = _RESTARTING
        self._cond.notify_all()
        logger.warning("restarting group %s (%s) in %.3g s: %s", group.name,
                       ", ".join(m.name for m in members), delay, reason)
        job = functools.partial(self._restart_group_job, group, list(members), tickets, delay)
        self._jobs.launch(f"restart-group:{group.name}", job)
        return [SupervisorEvent(EventKind.GROUP_RESTARTING, group.name, 0)]

    def _observe_dead_locked(self, child: ChildRecord) -> _Events:
        """A handle found the RUNNING child's actor dead: act unless its own report is still on its way."""
        now = time.monotonic()
        if child.dead_since is None:
            child.dead_since = now
        assert child.ref is not None
        if issubclass(child.ref.actor_class, SupervisedActor) and now - child.dead_since < self._notice_grace:
            return []
        return self._handle_end_locked(child, NoticeKind.CRASHED,
                                       ChildExited(f"{child.name} #{child.incarnation} ended without notice"),
                                       "child")

    # -- jobs (outside _cond) -------------------------------------------------------------------------

    def _replace(self, name: str, *, restart: bool) -> None:
        child = self._child(name)
        with self._exclusive(child):
            with self._cond:
                if not restart and child.state is _RUNNING:
                    return
                ticket = child.bump()
                old, child.ref = child.ref, None
                child.state = _RESTARTING
                child.recent.clear()
                self._cond.notify_all()
            stop_incarnation(old, child.spec.stop_timeout)
            error = self._spawn(child, ticket, restart=restart)
        if error is not None:
            raise ActorUnavailable(f"{name} did not start: {error}", child=name) from error

    def _restart_child_job(self, child: ChildRecord, ticket: int, delay: float) -> None:
        if not self._pause(delay, lambda: child.ticket == ticket):
            return
        with child.op_lock:
            with self._cond:
                if child.ticket != ticket:
                    return
                old, child.ref = child.ref, None
            stop_incarnation(old, child.spec.stop_timeout)
            self._spawn(child, ticket, restart=True)

    def _restart_group_job(self, group: GroupSpec, members: Sequence[ChildRecord], tickets: dict[str, int],
                           delay: float) -> None:
        def ours(member: ChildRecord) -> bool:
            return member.ticket == tickets[member.name]

        def any_ours() -> bool:
            return any(ours(member) for member in members)

        with locked_in_order(members):  # stop the old incarnations, dependants first
            with self._cond:
                olds = [(member, member.ref) for member in reversed(members) if ours(member)]
                for member, _ in olds:
                    member.ref = None
            for member, ref in olds:
                stop_incarnation(ref, member.spec.stop_timeout)
        if not self._pause(delay, any_ours):
            return
        attempt = 0
        while not probe_ready(group):
            attempt += 1
            if not self._pause(group.backoff.delay(attempt), any_ours):
                return
        with locked_in_order(members):  # rebuild, dependencies first
            for member in members:
                with self._cond:
                    wanted = ours(member)
                if wanted:
                    self._spawn(member, tickets[member.name], restart=True)

    def _stop_job(self, child: ChildRecord, ref: pykka.ActorRef[Any]) -> None:
        with child.op_lock:
            stop_incarnation(ref, child.spec.stop_timeout)

    def _stop_for_shutdown(self, child: ChildRecord, timeout: float) -> None:
        locked = child.op_lock.acquire(timeout=self._busy_timeout)
        if not locked:
            logger.warning("%s is still busy after %g s; stopping it anyway", child.name, self._busy_timeout)
        try:
            with self._cond:
                child.bump()
                old, child.ref = child.ref, None
                was, child.state = child.state, _STOPPED
                self._cond.notify_all()
            stop_incarnation(old, timeout)
        finally:
            if locked:
                child.op_lock.release()
        if was is not _STOPPED:
            self._emit([SupervisorEvent(EventKind.STOPPED, child.name, child.incarnation)])

    def _spawn(self, child: ChildRecord, ticket: int, *, restart: bool) -> BaseException | None:
        """Build the next incarnation and wait for its on_start; return why it did not start, if it did not.

        Called with the child's op_lock held. A failure is handled per policy before returning.
        """
        with self._cond:
            if child.ticket != ticket:
                return ChildExited(f"{child.name}: superseded before it started")
            incarnation = self._incarnations.get(child.name, 0) + 1
            self._incarnations[child.name] = incarnation
            child.incarnation, child.state, child.ref = incarnation, _RESTARTING, None
            child.starting, child.start_error, child.dead_since = True, None, None
            self._cond.notify_all()
        link = ChildLink(child.name, incarnation, self._receive_notice, self._is_current)
        ref, error = build_incarnation(child.spec, link)
        events: _Events = []
        with self._cond:
            child.starting = False
            if error is None and ref is not None and not ref.is_alive():
                error = child.start_error or ChildExited(f"{link} ended right after on_start")
            superseded = child.ticket != ticket
            if superseded:
                error = error or ChildExited(f"{child.name} #{incarnation}: superseded while starting")
            else:
                child.restarts += restart  # an incarnation whose on_start failed was a restart too
                if error is None:
                    child.ref, child.state = ref, _RUNNING
                    self._cond.notify_all()
                    events.append(SupervisorEvent(EventKind.RESTARTED if restart else EventKind.STARTED,
                                                  child.name, incarnation))
                    logger.info("%s #%d %s", child.name, incarnation, "restarted" if restart else "started")
                else:
                    events += self._handle_end_locked(child, NoticeKind.CRASHED, error, "child")
        if error is not None:
            # Usually already dead; one whose on_start overran is stopped before a successor is built.
            stop_incarnation(ref, child.spec.stop_timeout)
        self._emit(events)
        return error

    def _pause(self, delay: float, wanted: Callable[[], bool]) -> bool:
        """Wait `delay` s; tell whether the job is still wanted. The default wait ends early if not."""
        if self._sleep is not None:
            if delay > 0:
                self._sleep(delay)
            with self._cond:
                return wanted()
        deadline = time.monotonic() + delay
        with self._cond:
            while wanted():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                self._cond.wait(remaining)
            return False

    # -- small helpers --------------------------------------------------------------------------------

    def _child(self, name: str) -> ChildRecord:
        with self._cond:
            child = self._children.get(name)
        if child is None:
            raise UnknownChild(f"no child named {name!r}", child=name)
        return child

    def _ordered_locked(self) -> Sequence[ChildRecord]:
        return sorted(self._children.values(), key=lambda child: child.seq)

    def _members_locked(self, group: str) -> Sequence[ChildRecord]:
        return [child for child in self._ordered_locked() if child.spec.group == group]

    def _await_all_running(self, members: Sequence[ChildRecord], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(m.state is _RUNNING for m in members):
                down = [m for m in members if m.state in (_STOPPED, _FAILED)]
                if down:
                    raise ActorUnavailable(f"{down[0].name} is {down[0].state.value}", child=down[0].name,
                                           state=down[0].state)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    late = next(m for m in members if m.state is not _RUNNING)
                    raise ActorUnavailable(f"{late.name} not running again within {timeout} s",
                                           child=late.name, state=late.state)
                self._cond.wait(remaining)

    @contextlib.contextmanager
    def _exclusive(self, child: ChildRecord) -> Iterator[None]:
        if not child.op_lock.acquire(timeout=self._busy_timeout):
            raise ActorUnavailable(f"{child.name} is busy starting or stopping", child=child.name)
        try:
            yield
        finally:
            child.op_lock.release()

    def _emit(self, events: Iterable[SupervisorEvent]) -> None:
        if self._on_event is None:
            return
        for event in events:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("the on_event hook failed on %s", event)
