"""The supervisor restarts real pykka actors per policy, and stable handles survive the restarts.

Every test runs real ThreadingActors (no mocks of pykka). `Counter` children keep a value in memory and
rebuild it in on_start from `Store.db`, a stand-in for the database, so "old state" is observable: a
value in memory but not in the db disappears with a restart. Waits poll with deadlines; no test sleeps
for a fixed time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pykka
import pytest

from tradeengine.actors.supervisor import (
    ActorTimeout,
    ActorUnavailable,
    Backoff,
    ChildLink,
    ChildSpec,
    ChildState,
    DuplicateChild,
    EventKind,
    GroupSpec,
    Intensity,
    RestartPolicy,
    Strategy,
    SupervisedActor,
    Supervisor,
    SupervisorEvent,
    UnknownChild,
)

FAST = Backoff(initial=0.01, factor=2.0, cap=0.05)
NEVER = Backoff(initial=60.0, cap=60.0)  # a restart that will not happen during the test
WAIT = 5.0  # generous deadline for things that should happen quickly


class Store:
    """What outlives incarnations: the 'database' children rebuild from, and what the test observes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.db: dict[str, int] = {}
        self.log: list[tuple[Any, ...]] = []  # ("start"|"stop", name, incarnation), ("probe", ready)
        self.links: dict[tuple[str, int], ChildLink] = {}
        self.fail_starts: dict[str, int] = {}  # name -> how many more on_starts raise
        self.start_gates: dict[str, threading.Event] = {}  # name -> on_start waits for it
        self._events: list[threading.Event] = []

    def event(self) -> threading.Event:
        event = threading.Event()
        self._events.append(event)
        return event

    def gate_starts(self, name: str) -> threading.Event:
        gate = self.start_gates[name] = self.event()
        return gate

    def release(self) -> None:
        for event in self._events:
            event.set()

    def record(self, *entry: Any) -> None:
        with self.lock:
            self.log.append(entry)

    def entries(self, kind: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [entry[1:] for entry in self.log if entry[0] == kind]

    def incarnations_started(self, name: str) -> list[int]:
        return [incarnation for who, incarnation in self.entries("start") if who == name]


class Counter(SupervisedActor):
    """A child with memory: rebuilt from the store's db in on_start, changed in memory by messages."""

    def __init__(self, link: ChildLink, store: Store) -> None:
        super().__init__(link)
        self.store = store
        self.value = 0

    def on_start(self) -> None:
        name, incarnation = self.link.name, self.link.incarnation
        with self.store.lock:
            self.store.links[(name, incarnation)] = self.link
            failing = self.store.fail_starts.get(name, 0)
            self.store.fail_starts[name] = max(failing - 1, 0)
        if failing:
            raise RuntimeError("database down")
        gate = self.store.start_gates.get(name)
        if gate is not None:
            gate.wait(WAIT * 2)
        self.value = self.store.db.get(name, 0)
        self.store.record("start", name, incarnation)

    def on_stop(self) -> None:
        self.store.record("stop", self.link.name, self.link.incarnation)
        super().on_stop()

    def on_receive(self, message: Any) -> Any:
        match message:
            case "get":
                return (self.link.incarnation, self.value)
            case ("add", amount):
                self.value += amount
                return self.value
            case "commit":
                self.store.db[self.link.name] = self.value
                return None
            case "crash":
                raise RuntimeError("boom")
            case ("broken", scope):
                self.report_broken("commit failed", scope=scope)
                return None
            case ("wait", event):
                event.wait(WAIT * 2)
                return None
            case "quit":
                self.stop()
                return None
        return super().on_receive(message)

    def total(self, extra: int) -> int:
        return self.value + extra


class Plain(pykka.ThreadingActor):
    """A plain pykka actor: it never reports to the supervisor."""

    def on_receive(self, message: Any) -> Any:
        return "pong"


def counter(name: str, store: Store, **options: Any) -> ChildSpec:
    options.setdefault("backoff", FAST)
    return ChildSpec.for_actor(name, Counter, {"store": store}, **options)


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def is_running(supervisor: Supervisor, name: str, incarnation: int) -> Callable[[], bool]:
    def check() -> bool:
        status = supervisor.status(name)
        return status.state is ChildState.RUNNING and status.incarnation == incarnation
    return check


def our_actors() -> list[pykka.ActorRef[Any]]:
    return [ref for ref in pykka.ActorRegistry.get_all() if issubclass(ref.actor_class, (Counter, Plain))]


def our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith(("Counter-", "Plain-", "supervisor:")) and t.is_alive()]


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def make_supervisor(store: Store) -> Iterator[Callable[..., Supervisor]]:
    made: list[Supervisor] = []

    def make(**options: Any) -> Supervisor:
        supervisor = Supervisor(**options)
        made.append(supervisor)
        return supervisor

    yield make
    store.release()
    for supervisor in made:
        supervisor.stop_all(timeout=WAIT)
    eventually(lambda: not our_actors() and not our_threads())


@pytest.fixture
def events() -> list[SupervisorEvent]:
    return []


def kinds(events: list[SupervisorEvent], kind: EventKind) -> list[tuple[str, int]]:
    return [(event.name, event.incarnation) for event in list(events) if event.kind is kind]


# -- restarts -----------------------------------------------------------------------------------------


def test_a_child_that_raises_on_a_told_message_is_restarted_with_the_next_incarnation_and_on_start_ran_again(
    make_supervisor: Callable[..., Supervisor], store: Store, events: list[SupervisorEvent],
) -> None:
    supervisor = make_supervisor(on_event=events.append)
    pair = supervisor.add(counter("pair:BTC-USDT", store))
    assert pair.ask("get", WAIT) == (1, 0)

    pair.tell("crash")

    assert pair.ask("get", WAIT) == (2, 0)
    assert store.incarnations_started("pair:BTC-USDT") == [1, 2]
    assert supervisor.status("pair:BTC-USDT").restarts == 1
    assert kinds(events, EventKind.CRASHED) == [("pair:BTC-USDT", 1)]
    assert kinds(events, EventKind.RESTARTED) == [("pair:BTC-USDT", 2)]


def test_a_handle_obtained_before_the_crash_reaches_the_new_incarnation_with_state_rebuilt_from_the_db(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    supervisor.add(counter("pair:BTC-USDT", store))
    pair = supervisor.handle("pair:BTC-USDT")
    pair.ask(("add", 5), WAIT)
    pair.ask("commit", WAIT)
    pair.ask(("add", 3), WAIT)  # in memory only: lost with the incarnation

    pair.tell("crash")
    eventually(is_running(supervisor, "pair:BTC-USDT", 2))

    assert pair.ask("get", WAIT) == (2, 5)
    assert pair.incarnation == 2
    assert pair.state is ChildState.RUNNING


def test_an_ask_queued_behind_a_crash_is_resent_to_the_new_incarnation(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:BTC-USDT", store))
    hold = store.event()
    pair.tell(("wait", hold))
    pair.tell("crash")
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(pair.ask, "get", WAIT)
        eventually(lambda: supervisor.status("pair:BTC-USDT").mailbox == 2)  # the crash, then our ask

        hold.set()

        assert reply.result(WAIT) == (2, 0)


def test_an_ask_during_a_restart_waits_for_the_new_incarnation_and_then_succeeds(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:BTC-USDT", store))
    gate = store.gate_starts("pair:BTC-USDT")  # incarnation 2's on_start waits for it
    pair.tell("crash")
    eventually(lambda: supervisor.status("pair:BTC-USDT").incarnation == 2)
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(pair.ask, "get", WAIT)
        assert supervisor.status("pair:BTC-USDT").state is ChildState.RESTARTING
        assert not reply.done()

        gate.set()

        assert reply.result(WAIT) == (2, 0)


def test_an_ask_to_a_child_that_stays_down_beyond_the_timeout_raises_actor_unavailable_in_bounded_time(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:BTC-USDT", store, backoff=NEVER))
    pair.tell("crash")
    eventually(lambda: supervisor.status("pair:BTC-USDT").state is ChildState.RESTARTING)

    started = time.monotonic()
    with pytest.raises(ActorUnavailable) as raised:
        pair.ask("get", 0.3)

    assert time.monotonic() - started < 0.3 + 1.0
    assert raised.value.code == "UNAVAILABLE"
    assert raised.value.state is ChildState.RESTARTING
    assert raised.value.child == "pair:BTC-USDT"


def test_a_tell_to_a_restarting_child_raises_actor_unavailable_without_waiting(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:BTC-USDT", store, backoff=NEVER))
    pair.tell("crash")
    eventually(lambda: supervisor.status("pair:BTC-USDT").state is ChildState.RESTARTING)

    with pytest.raises(ActorUnavailable):
        pair.tell(("add", 1))
    with pytest.raises(ActorUnavailable):
        pair.ask_future("get")


def test_a_live_child_that_does_not_answer_in_time_raises_actor_timeout_and_its_late_reply_is_never_returned(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:BTC-USDT", store))
    hold = store.event()
    pair.tell(("wait", hold))

    with pytest.raises(ActorTimeout) as raised:
        pair.ask(("add", 7), 0.2)
    assert raised.value.code == "ENGINE_TIMEOUT"

    hold.set()
    pair.tell("crash")
    assert pair.ask("get", WAIT) == (2, 0)  # the answer of the new incarnation, not the late "7"


def test_a_failing_on_start_is_retried_with_backoff_until_it_succeeds(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    store.fail_starts["wallet"] = 2

    with pytest.raises(ActorUnavailable):
        supervisor.add(counter("wallet", store))

    eventually(is_running(supervisor, "wallet", 3))
    status = supervisor.status("wallet")
    assert status.restarts == 2  # incarnations 2 (its on_start failed too) and 3
    failure = status.last_failure
    assert failure is not None and failure.type == "ChildExited" and "on_start" in failure.message
    assert supervisor.handle("wallet").ask("get", WAIT) == (3, 0)


def test_a_plain_pykka_child_that_dies_without_notice_is_found_dead_by_its_handle_and_restarted(
    make_supervisor: Callable[..., Supervisor], events: list[SupervisorEvent],
) -> None:
    supervisor = make_supervisor(on_event=events.append)
    refs: list[pykka.ActorRef[Plain]] = []

    def build(link: ChildLink) -> pykka.ActorRef[Plain]:
        refs.append(Plain.start())
        return refs[-1]

    relay = supervisor.add(ChildSpec("relay", build, backoff=FAST))
    refs[0].stop()

    assert relay.ask("ping", WAIT) == "pong"
    assert supervisor.status("relay").incarnation == 2
    assert kinds(events, EventKind.CRASHED) == [("relay", 1)]


def test_handle_call_invokes_a_method_on_the_current_incarnation(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:BTC-USDT", store))
    pair.ask(("add", 2), WAIT)

    assert pair.call("total", 40, timeout=WAIT) == 42


# -- policies -----------------------------------------------------------------------------------------


def test_a_transient_child_that_stops_normally_stays_stopped_and_a_permanent_one_is_restarted(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    transient = supervisor.add(counter("relay", store, policy=RestartPolicy.TRANSIENT))
    permanent = supervisor.add(counter("writer", store))

    transient.tell("quit")
    permanent.tell("quit")

    eventually(lambda: supervisor.status("relay").state is ChildState.STOPPED)
    assert permanent.ask("get", WAIT) == (2, 0)
    assert supervisor.status("relay").last_failure is None


def test_a_temporary_child_that_crashes_is_not_restarted(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    probe = supervisor.add(counter("probe", store, policy=RestartPolicy.TEMPORARY))

    probe.tell("crash")

    eventually(lambda: supervisor.status("probe").state is ChildState.STOPPED)
    with pytest.raises(ActorUnavailable):
        probe.ask("get", WAIT)
    assert store.incarnations_started("probe") == [1]


# -- intensity and backoff ----------------------------------------------------------------------------


def test_the_intensity_limit_marks_the_child_failed_after_n_crashes_in_t_seconds_and_asks_fail_at_once(
    make_supervisor: Callable[..., Supervisor], store: Store, events: list[SupervisorEvent],
) -> None:
    supervisor = make_supervisor(on_event=events.append, clock=lambda: 0.0)
    pair = supervisor.add(counter("pair:BTC-USDT", store, intensity=Intensity(max_restarts=3, within=10.0)))
    for incarnation in (2, 3, 4):
        pair.tell("crash")
        assert pair.ask("get", WAIT)[0] == incarnation

    pair.tell("crash")  # the fourth within the window

    eventually(lambda: supervisor.status("pair:BTC-USDT").state is ChildState.FAILED)
    started = time.monotonic()
    with pytest.raises(ActorUnavailable) as raised:
        pair.ask("get", WAIT)
    assert time.monotonic() - started < 1.0
    assert raised.value.state is ChildState.FAILED
    assert kinds(events, EventKind.FAILED) == [("pair:BTC-USDT", 4)]
    assert store.incarnations_started("pair:BTC-USDT") == [1, 2, 3, 4]


def test_crashes_older_than_the_intensity_window_no_longer_count(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    now = [0.0]
    supervisor = make_supervisor(clock=lambda: now[0])
    pair = supervisor.add(counter("pair:BTC-USDT", store, intensity=Intensity(max_restarts=2, within=10.0)))
    for incarnation in (2, 3):
        pair.tell("crash")
        assert pair.ask("get", WAIT)[0] == incarnation

    now[0] = 10.5
    pair.tell("crash")
    assert pair.ask("get", WAIT)[0] == 4  # the first two fell out of the window

    pair.tell("crash")
    assert pair.ask("get", WAIT)[0] == 5
    pair.tell("crash")
    eventually(lambda: supervisor.status("pair:BTC-USDT").state is ChildState.FAILED)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    backoff = Backoff(initial=0.1, factor=2.0, cap=1.0)
    delays = [backoff.delay(attempt) for attempt in range(1, 7)]

    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.delay(100_000) == 1.0
    with pytest.raises(ValueError):
        backoff.delay(0)
    with pytest.raises(ValueError):
        Backoff(initial=-1.0)


def test_restarts_wait_for_the_backoff_which_grows_with_recent_crashes_up_to_its_cap(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    slept: list[float] = []
    supervisor = make_supervisor(sleep=slept.append, clock=lambda: 0.0)
    pair = supervisor.add(counter("pair:BTC-USDT", store, backoff=Backoff(initial=0.1, factor=2.0, cap=0.5),
                                  intensity=Intensity(max_restarts=10, within=60.0)))

    for incarnation in range(2, 7):
        pair.tell("crash")
        assert pair.ask("get", WAIT)[0] == incarnation

    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_an_operator_restart_resets_a_failed_child(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor(clock=lambda: 0.0)
    pair = supervisor.add(counter("pair:BTC-USDT", store, intensity=Intensity(max_restarts=1, within=10.0)))
    pair.tell("crash")
    assert pair.ask("get", WAIT)[0] == 2
    pair.tell("crash")
    eventually(lambda: supervisor.status("pair:BTC-USDT").state is ChildState.FAILED)

    supervisor.restart("pair:BTC-USDT")

    assert supervisor.status("pair:BTC-USDT").state is ChildState.RUNNING
    assert pair.ask("get", WAIT) == (3, 0)
    pair.tell("crash")  # the window was reset: restarted again, not failed
    assert pair.ask("get", WAIT) == (4, 0)


# -- strategies ---------------------------------------------------------------------------------------


def test_one_for_one_restarts_only_the_crashed_child_while_siblings_keep_their_state_and_keep_answering(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pairs = {name: supervisor.add(counter(name, store)) for name in ("pair:A", "pair:B", "pair:C")}
    for amount, pair in enumerate(pairs.values(), start=1):
        pair.ask(("add", amount), WAIT)
    gate = store.gate_starts("pair:B")

    pairs["pair:B"].tell("crash")
    eventually(lambda: supervisor.status("pair:B").incarnation == 2)
    assert pairs["pair:A"].ask("get", WAIT) == (1, 1)  # while B is still in on_start
    assert pairs["pair:C"].ask("get", WAIT) == (1, 3)
    gate.set()

    assert pairs["pair:B"].ask("get", WAIT) == (2, 0)
    assert [(s.name, s.incarnation, s.restarts) for s in supervisor.list()] == [
        ("pair:A", 1, 0), ("pair:B", 2, 1), ("pair:C", 1, 0)]


def _database_group(make_supervisor: Callable[..., Supervisor], store: Store, ready: Callable[[], bool],
                    **options: Any) -> tuple[Supervisor, dict[str, Any]]:
    group = GroupSpec("database", ready=ready, backoff=Backoff(initial=0.001, cap=0.005))
    supervisor = make_supervisor(groups=[group], **options)
    handles = {
        "writer": supervisor.add(counter("writer", store, group="database", strategy=Strategy.ONE_FOR_ALL)),
        "wallet": supervisor.add(counter("wallet", store, group="database")),
        "pair:A": supervisor.add(counter("pair:A", store, group="database")),
        "relay": supervisor.add(counter("relay", store)),  # not in the group
    }
    store.db.update({"writer": 10, "wallet": 20, "pair:A": 30})
    for handle in handles.values():
        handle.ask(("add", 1), WAIT)  # memory now differs from the db
    return supervisor, handles


def _flaky_probe(store: Store, failures: int) -> Callable[[], bool]:
    calls = iter(range(1_000_000))

    def ready() -> bool:
        result = next(calls) >= failures
        store.record("probe", result)
        return result
    return ready


def test_one_for_all_restarts_the_whole_group_after_the_probe_passes_and_no_member_answers_with_old_state(
    make_supervisor: Callable[..., Supervisor], store: Store, events: list[SupervisorEvent],
) -> None:
    supervisor, handles = _database_group(make_supervisor, store, _flaky_probe(store, failures=3),
                                          on_event=events.append)

    supervisor.restart_group("database", timeout=WAIT)

    assert handles["writer"].ask("get", WAIT) == (2, 10)
    assert handles["wallet"].ask("get", WAIT) == (2, 20)
    assert handles["pair:A"].ask("get", WAIT) == (2, 30)
    assert handles["relay"].ask("get", WAIT) == (1, 1)  # outside the group: untouched
    with store.lock:
        log = [entry for entry in store.log if entry[0] != "start" or entry[2] == 2]
    probes = [index for index, entry in enumerate(log) if entry[0] == "probe"]
    starts = [index for index, entry in enumerate(log) if entry[0] == "start"]
    assert [log[i][1] for i in probes] == [False, False, False, True]
    assert min(starts) > max(probes)  # nothing was rebuilt before the database answered
    assert [log[i][1] for i in starts] == ["writer", "wallet", "pair:A"]  # dependencies first
    stops = [entry[1] for entry in log if entry[0] == "stop"]
    assert stops == ["pair:A", "wallet", "writer"]  # dependants first
    assert kinds(events, EventKind.GROUP_RESTARTING) == [("database", 0)]


def test_a_crash_of_a_one_for_all_member_restarts_its_whole_group(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor, handles = _database_group(make_supervisor, store, lambda: True)

    handles["writer"].tell("crash")

    assert handles["writer"].ask("get", WAIT) == (2, 10)
    eventually(lambda: all(s.state is ChildState.RUNNING for s in supervisor.list()))
    assert handles["wallet"].ask("get", WAIT) == (2, 20)
    assert handles["pair:A"].ask("get", WAIT) == (2, 30)
    assert handles["relay"].ask("get", WAIT) == (1, 1)


def test_a_crash_of_a_one_for_one_member_of_a_group_restarts_it_alone(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    _, handles = _database_group(make_supervisor, store, lambda: True)

    handles["pair:A"].tell("crash")

    assert handles["pair:A"].ask("get", WAIT) == (2, 30)
    assert handles["writer"].ask("get", WAIT) == (1, 1)
    assert handles["wallet"].ask("get", WAIT) == (1, 1)


def test_a_one_for_all_member_beyond_its_intensity_fails_its_whole_group_but_not_the_others(
    make_supervisor: Callable[..., Supervisor], store: Store, events: list[SupervisorEvent],
) -> None:
    group = GroupSpec("database", backoff=FAST)
    supervisor = make_supervisor(groups=[group], on_event=events.append, clock=lambda: 0.0)
    writer = supervisor.add(counter("writer", store, group="database", strategy=Strategy.ONE_FOR_ALL,
                                    intensity=Intensity(max_restarts=1, within=10.0)))
    pair = supervisor.add(counter("pair:A", store, group="database"))
    relay = supervisor.add(counter("relay", store))
    writer.tell("crash")
    assert writer.ask("get", WAIT)[0] == 2
    eventually(is_running(supervisor, "pair:A", 2))

    writer.tell("crash")

    eventually(lambda: supervisor.status("pair:A").state is ChildState.FAILED)
    assert supervisor.status("writer").state is ChildState.FAILED
    assert sorted(kinds(events, EventKind.FAILED)) == [("pair:A", 2), ("writer", 2)]
    with pytest.raises(ActorUnavailable):
        pair.ask("get", WAIT)
    assert relay.ask("get", WAIT) == (1, 0)

    supervisor.restart_group("database", timeout=WAIT)  # the operator resets the group

    assert [writer.ask("get", WAIT)[0], pair.ask("get", WAIT)[0]] == [3, 3]


@pytest.mark.parametrize("operation", ["restart", "start"])
def test_restarting_a_member_of_a_group_failed_with_its_one_for_all_member_rebuilds_the_whole_group(
    make_supervisor: Callable[..., Supervisor], store: Store, operation: str,
) -> None:
    """The pair could not run without the writer: asked to start it, the supervisor rebuilds both."""
    supervisor = make_supervisor(groups=[GroupSpec("database", backoff=FAST)], clock=lambda: 0.0)
    writer = supervisor.add(counter("writer", store, group="database", strategy=Strategy.ONE_FOR_ALL,
                                    intensity=Intensity(max_restarts=0, within=10.0)))
    pair = supervisor.add(counter("pair:A", store, group="database"))
    writer.tell("crash")
    eventually(lambda: supervisor.status("pair:A").state is ChildState.FAILED)

    getattr(supervisor, operation)("pair:A")

    assert {s.name: s.state for s in supervisor.list()} == {"writer": ChildState.RUNNING,
                                                             "pair:A": ChildState.RUNNING}
    assert [writer.ask("get", WAIT)[0], pair.ask("get", WAIT)[0]] == [2, 2]


def test_a_group_restart_requested_without_waiting_returns_at_once_and_the_group_comes_back_later(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    database_up = threading.Event()
    supervisor, handles = _database_group(make_supervisor, store, database_up.is_set)

    supervisor.restart_group("database", wait=False)

    assert supervisor.status("wallet").state is ChildState.RESTARTING
    with pytest.raises(ActorUnavailable):
        handles["wallet"].ask("get", 0.05)  # the database does not answer yet
    database_up.set()
    assert handles["wallet"].ask("get", WAIT) == (2, 20)


def test_a_child_reporting_itself_broken_for_its_group_gets_the_group_rebuilt_from_the_database(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor, handles = _database_group(make_supervisor, store, lambda: True)

    handles["pair:A"].ask(("broken", "group"), WAIT)  # e.g. its commit failed

    eventually(lambda: all(s.state is ChildState.RUNNING and s.incarnation == (1 if s.name == "relay" else 2)
                           for s in supervisor.list()))
    assert [handles[name].ask("get", WAIT) for name in ("writer", "wallet", "pair:A")] == [
        (2, 10), (2, 20), (2, 30)]
    failure = supervisor.status("pair:A").last_failure
    assert failure is not None and (failure.type, failure.message) == ("ChildBroken", "commit failed")


def test_a_child_reporting_itself_broken_is_replaced_alone_and_queued_asks_reach_its_successor(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:A", store))
    hold = store.event()
    pair.tell(("wait", hold))
    pair.tell(("broken", "child"))
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(pair.ask, ("add", 4), WAIT)
        eventually(lambda: supervisor.status("pair:A").mailbox == 2)

        hold.set()

        assert reply.result(WAIT) == 4  # handled once, by incarnation 2
    assert pair.ask("get", WAIT) == (2, 4)


# -- late reports -------------------------------------------------------------------------------------


def test_a_late_failure_report_from_a_dead_incarnation_is_ignored(
    make_supervisor: Callable[..., Supervisor], store: Store, events: list[SupervisorEvent],
) -> None:
    supervisor = make_supervisor(on_event=events.append)
    pair = supervisor.add(counter("pair:A", store))
    pair.tell("crash")
    assert pair.ask("get", WAIT)[0] == 2
    old_link = store.links[("pair:A", 1)]

    old_link.report_crash(RuntimeError("late"))
    old_link.report_broken(RuntimeError("late"), scope="group")
    old_link.report_exit()

    assert pair.ask("get", WAIT)[0] == 2
    status = supervisor.status("pair:A")
    assert (status.state, status.incarnation, status.restarts) == (ChildState.RUNNING, 2, 1)
    assert store.incarnations_started("pair:A") == [1, 2]
    assert kinds(events, EventKind.LATE_NOTICE_IGNORED) == [("pair:A", 1)] * 3
    assert not old_link.is_current()
    assert store.links[("pair:A", 2)].is_current()


# -- operator controls --------------------------------------------------------------------------------


def test_list_shows_state_incarnation_restarts_mailbox_and_last_failure(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor(wall_clock=lambda: 1_700_000_000.0)
    crashing = supervisor.add(counter("pair:A", store))
    busy = supervisor.add(counter("pair:B", store))
    supervisor.add(counter("relay", store))
    crashing.tell("crash")
    assert crashing.ask("get", WAIT)[0] == 2
    hold = store.event()
    busy.tell(("wait", hold))
    for _ in range(3):
        busy.tell(("add", 1))
    supervisor.stop("relay")

    eventually(lambda: supervisor.status("pair:B").mailbox == 3)
    rows = {status.name: status for status in supervisor.list()}
    hold.set()

    assert [name for name in rows] == ["pair:A", "pair:B", "relay"]
    assert rows["pair:A"].as_dict() == {
        "name": "pair:A", "state": "running", "incarnation": 2, "restarts": 1, "mailbox": 0,
        "last_failure": {"type": "RuntimeError", "message": "boom", "at": 1_700_000_000.0, "incarnation": 1},
        "group": None, "policy": "permanent",
    }
    assert (rows["pair:B"].state, rows["pair:B"].mailbox, rows["pair:B"].last_failure) == (
        ChildState.RUNNING, 3, None)
    assert (rows["relay"].state, rows["relay"].mailbox) == (ChildState.STOPPED, 0)


def test_add_at_runtime_spawns_a_running_child_at_once(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    supervisor.add(counter("pair:BTC-USDT", store))
    store.db["pair:ETH-USDT"] = 9

    pair = supervisor.add(counter("pair:ETH-USDT", store))

    assert supervisor.status("pair:ETH-USDT").state is ChildState.RUNNING
    assert store.incarnations_started("pair:ETH-USDT") == [1]
    assert pair.ask("get", WAIT) == (1, 9)
    assert pair == supervisor.handle("pair:ETH-USDT")


def test_adding_a_duplicate_or_reaching_an_unknown_child_is_refused(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    supervisor.add(counter("pair:A", store))

    with pytest.raises(DuplicateChild):
        supervisor.add(counter("pair:A", store))
    with pytest.raises(UnknownChild):
        supervisor.handle("pair:Z")
    with pytest.raises(UnknownChild):
        supervisor.restart("pair:Z")
    with pytest.raises(ValueError, match="unknown group"):
        supervisor.add(counter("pair:B", store, group="nowhere"))
    with pytest.raises(ValueError, match="needs a group"):
        counter("writer", store, strategy=Strategy.ONE_FOR_ALL)


def test_stop_refuses_asks_at_once_and_start_brings_the_child_back_with_a_new_incarnation(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:A", store))

    supervisor.stop("pair:A")

    assert store.entries("stop") == [("pair:A", 1)]
    started = time.monotonic()
    with pytest.raises(ActorUnavailable) as raised:
        pair.ask("get", WAIT)
    assert time.monotonic() - started < 1.0 and raised.value.state is ChildState.STOPPED

    supervisor.start("pair:A")

    assert pair.ask("get", WAIT) == (2, 0)
    assert supervisor.status("pair:A").restarts == 0


def test_an_operator_restart_returns_once_the_new_incarnation_has_rebuilt_its_state(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:A", store))
    pair.ask(("add", 2), WAIT)
    store.db["pair:A"] = 7

    supervisor.restart("pair:A")

    assert store.entries("stop") == [("pair:A", 1)]
    assert store.incarnations_started("pair:A") == [1, 2]
    assert pair.ask("get", WAIT) == (2, 7)


def test_a_removed_child_is_unavailable_and_a_new_one_of_the_same_name_gets_a_fresh_incarnation(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    pair = supervisor.add(counter("pair:A", store))

    supervisor.remove("pair:A")

    assert store.entries("stop") == [("pair:A", 1)]
    with pytest.raises(ActorUnavailable):
        pair.ask("get", WAIT)
    with pytest.raises(UnknownChild):
        supervisor.handle("pair:A")
    supervisor.add(counter("pair:A", store))
    assert pair.ask("get", WAIT) == (2, 0)


def test_stop_all_cancels_a_pending_restart_at_once_and_a_failing_hook_changes_nothing(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    def broken_hook(event: SupervisorEvent) -> None:
        raise RuntimeError("metrics down")

    supervisor = make_supervisor(on_event=broken_hook)
    pair = supervisor.add(counter("pair:A", store, backoff=NEVER))
    pair.tell("crash")
    eventually(lambda: supervisor.status("pair:A").state is ChildState.RESTARTING)

    started = time.monotonic()
    supervisor.stop_all()

    assert time.monotonic() - started < 2.0
    assert supervisor.status("pair:A").state is ChildState.STOPPED
    eventually(lambda: not our_threads())
    assert store.incarnations_started("pair:A") == [1]


def test_stop_all_runs_every_on_stop_in_reverse_order_of_start_and_leaves_no_live_actor_threads(
    make_supervisor: Callable[..., Supervisor], store: Store,
) -> None:
    supervisor = make_supervisor()
    handles = [supervisor.add(counter(name, store)) for name in ("writer", "wallet", "pair:A", "pair:B")]
    handles[0].tell("crash")  # restarted: its place in the order is where it was added
    assert handles[0].ask("get", WAIT)[0] == 2

    supervisor.stop_all()

    assert [name for name, incarnation in store.entries("stop")] == ["pair:B", "pair:A", "wallet", "writer"]
    assert all(status.state is ChildState.STOPPED for status in supervisor.list())
    with pytest.raises(ActorUnavailable):
        handles[2].ask("get", WAIT)
    eventually(lambda: not our_actors() and not our_threads())
