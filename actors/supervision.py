"""The supervision vocabulary: child specs, policies, backoff, intensity, statuses, events and errors.

Nothing here starts a thread or touches an actor; `supervisor.py` runs the machinery, `handles.py` holds
the stable handles callers keep, `supervised.py` the base class children inherit from.

Errors (the lead re-parents them under the project's error root, `engine/errors.py`, later):

```
SupervisionError            INTERNAL_ERROR   root of what the supervisor raises on purpose
├── ActorUnavailable        UNAVAILABLE      restarting past the caller's wait, failed, stopped or removed
├── ActorTimeout            ENGINE_TIMEOUT   a live incarnation got it but did not answer in time
├── UnknownChild            NOT_FOUND        no child of that name
└── DuplicateChild          DUPLICATE_CHILD  a child of that name already exists
ChildExited, ChildBroken    (not raised)     recorded causes: ended without an exception / reported broken
```
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tradeengine.engine.errors import EngineTimeout, EngineUnavailable, InfrastructureError

if TYPE_CHECKING:
    import pykka

    from .supervised import ChildLink

__all__ = [
    "ActorTimeout",
    "ActorUnavailable",
    "Backoff",
    "ChildBroken",
    "ChildExited",
    "ChildFactory",
    "ChildFailure",
    "ChildSpec",
    "ChildState",
    "ChildStatus",
    "DuplicateChild",
    "EventKind",
    "GroupSpec",
    "Intensity",
    "RestartPolicy",
    "Strategy",
    "SupervisionError",
    "SupervisorEvent",
    "UnknownChild",
]


# -- errors -------------------------------------------------------------------------------------------


class SupervisionError(InfrastructureError):
    """Root of every error the supervisor raises on purpose (an engine InfrastructureError)."""

    code: str = "INTERNAL_ERROR"

    def __init__(self, message: str, *, child: str | None = None) -> None:
        super().__init__(message)
        self.child = child

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, child={self.child!r})"


class ActorUnavailable(SupervisionError, EngineUnavailable):
    """The child cannot take the message now: restarting beyond the wait, failed, stopped or removed."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, *, child: str | None = None, state: ChildState | None = None) -> None:
        super().__init__(message, child=child)
        self.state = state


class ActorTimeout(SupervisionError, EngineTimeout):
    """A live incarnation took the message but did not answer in time; it may or may not have acted."""

    code = "ENGINE_TIMEOUT"


class UnknownChild(SupervisionError):
    """No child of that name is supervised."""

    code = "NOT_FOUND"


class DuplicateChild(SupervisionError):
    """A child of that name is already supervised."""

    code = "DUPLICATE_CHILD"


class ChildExited(Exception):
    """Recorded as the failure when a child ended without raising (on_start failed, stopped unasked)."""


class ChildBroken(Exception):
    """Recorded as the failure when a child reports itself broken with a plain reason."""


# -- policies -----------------------------------------------------------------------------------------


class RestartPolicy(enum.Enum):
    """When a child that ended is started again (Erlang's restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal end (crash, broken report, failed start)
    TEMPORARY = "temporary"  # never

    def restarts_after(self, *, abnormal: bool) -> bool:
        """Tell whether a child with this policy is restarted after such an end."""
        return self is RestartPolicy.PERMANENT or (self is RestartPolicy.TRANSIENT and abnormal)


class Strategy(enum.Enum):
    """What a crash of this child restarts: itself, or every running member of its group."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"


class ChildState(enum.Enum):
    """A child's state as operators see it (`GET /admin/actors`)."""

    RUNNING = "running"
    RESTARTING = "restarting"  # also while the first incarnation's on_start runs
    STOPPED = "stopped"
    FAILED = "failed"  # restart intensity exceeded; stays down until an operator restarts it


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delay before a restart: `initial * factor**(attempt-1)`, never above `cap`."""

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 10.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.cap < 0 or self.factor < 1:
            raise ValueError(f"backoff needs initial >= 0, cap >= 0, factor >= 1: {self}")

    def delay(self, attempt: int) -> float:
        """Return the delay before restart number `attempt` (1 for the first)."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        try:
            return min(self.cap, self.initial * self.factor ** (attempt - 1))
        except OverflowError:
            return self.cap


@dataclass(frozen=True, slots=True)
class Intensity:
    """At most `max_restarts` restarts within `within` seconds; one more marks the child failed."""

    max_restarts: int = 5
    within: float = 10.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.within <= 0:
            raise ValueError(f"intensity needs max_restarts >= 0 and within > 0: {self}")


def _always_ready() -> bool:
    return True


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A named one-for-all group; its restart waits until `ready()` is true, retrying with `backoff`."""

    name: str
    ready: Callable[[], bool] = _always_ready
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.2, cap=5.0))


ChildFactory = Callable[["ChildLink"], "pykka.ActorRef[Any]"]
"""Build and start a fresh incarnation; its on_start rebuilds state. Must not reuse a previous actor."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to build, name and restart one child.

    `group` names a `GroupSpec` the child belongs to (for one-for-all restarts); `strategy` says what a
    crash of this child restarts. A pair is typically `group="database"` with ONE_FOR_ONE (a crashed pair
    restarts alone, yet it is rebuilt with the group after a failed commit); the writer ONE_FOR_ALL.
    """

    name: str
    factory: ChildFactory
    policy: RestartPolicy = RestartPolicy.PERMANENT
    strategy: Strategy = Strategy.ONE_FOR_ONE
    group: str | None = None
    backoff: Backoff = field(default_factory=Backoff)
    intensity: Intensity = field(default_factory=Intensity)
    start_timeout: float = 10.0  # on_start must finish within this
    stop_timeout: float = 5.0  # on_stop must finish within this

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a child needs a name")
        if self.strategy is Strategy.ONE_FOR_ALL and self.group is None:
            raise ValueError(f"{self.name}: a one-for-all child needs a group")

    @classmethod
    def for_actor(
        cls,
        name: str,
        actor_class: type[pykka.Actor],
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> ChildSpec:
        """Spec a child built as `actor_class.start(link, **kwargs)` (a SupervisedActor subclass)."""
        frozen_kwargs = dict(kwargs or {})

        def factory(link: ChildLink) -> pykka.ActorRef[Any]:
            return actor_class.start(link, **frozen_kwargs)

        return cls(name, factory, **options)


# -- what operators and the metrics layer see ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildFailure:
    """The last abnormal end of a child: exception type and message, wall-clock time, incarnation."""

    type: str
    message: str
    at: float  # seconds since the epoch
    incarnation: int

    @classmethod
    def of(cls, error: BaseException | None, *, at: float, incarnation: int) -> ChildFailure:
        """Describe `error` (None reads as an exit without an exception)."""
        if error is None:
            return cls("ChildExited", "exited without an exception", at, incarnation)
        return cls(type(error).__name__, str(error), at, incarnation)


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """One row of `Supervisor.list()`."""

    name: str
    state: ChildState
    incarnation: int
    restarts: int  # incarnations started as restarts (by the supervisor or an operator), up or not
    mailbox: int
    last_failure: ChildFailure | None
    group: str | None
    policy: RestartPolicy

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON shape of `GET /admin/actors` (without open_orders, which is the pair's)."""
        failure = self.last_failure
        return {
            "name": self.name,
            "state": self.state.value,
            "incarnation": self.incarnation,
            "restarts": self.restarts,
            "mailbox": self.mailbox,
            "last_failure": None if failure is None else {
                "type": failure.type, "message": failure.message, "at": failure.at,
                "incarnation": failure.incarnation,
            },
            "group": self.group,
            "policy": self.policy.value,
        }


class EventKind(enum.Enum):
    """What a `SupervisorEvent` reports."""

    STARTED = "started"  # first incarnation running (or started again by an operator)
    CRASHED = "crashed"  # an incarnation ended abnormally (crash, broken report, failed start)
    RESTARTED = "restarted"  # a new incarnation finished on_start after a restart
    GROUP_RESTARTING = "group_restarting"  # name is the group's
    FAILED = "failed"  # restart intensity exceeded: given up until an operator restarts it
    STOPPED = "stopped"
    LATE_NOTICE_IGNORED = "late_notice_ignored"  # a report from a dead incarnation


@dataclass(frozen=True, slots=True)
class SupervisorEvent:
    """Passed to the supervisor's `on_event` hook (metrics count restarts and failures from these)."""

    kind: EventKind
    name: str
    incarnation: int
    error: BaseException | None = None
