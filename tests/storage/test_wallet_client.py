"""The wallet-service client against the real reference service, and its breaker against the real Redis.

One wallet service (a subprocess on a loopback port, with fault injection) and one database serve the
module; every test uses users and idempotency keys of its own and starts with no faults. Tests that
stop the service leave it running again.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pybreaker
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import _scratch_database
from tests.e2e.conftest import TcpProxy
from tests.wallet_service_harness import WalletService, free_port, running_wallet_service
from tradeengine.engine.errors import InsufficientBalance
from tradeengine.ops.metrics import EngineMetrics
from tradeengine.storage.breaker import SharedBreakerStorage, close_breaker
from tradeengine.storage.breaker import make_breaker as build_breaker
from tradeengine.storage.errors import StorageError, StorageUnavailable
from tradeengine.storage.wallet_client import (
    WalletBalance,
    WalletClient,
    WalletRejected,
    WalletUnavailable,
)

USDT, BTC = "USDT", "BTC"
FEES = "__fees__"
UNIT = 100_000_000  # atoms per unit

ClientFactory = Callable[..., WalletClient]
BreakerFactory = Callable[..., pybreaker.CircuitBreaker]


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wallet_database(machine_pg_admin_url: str) -> Iterator[str]:
    yield from _scratch_database(machine_pg_admin_url)


@pytest.fixture(scope="module")
def wallet_service(wallet_database: str) -> Iterator[WalletService]:
    with running_wallet_service(wallet_database, faults=True) as service:
        yield service


@pytest.fixture
def wallet(wallet_service: WalletService) -> Iterator[WalletService]:
    """The module's wallet service, running, with no faults and counters at zero."""
    if not wallet_service.running:
        wallet_service.start()
    wallet_service.clear_faults()
    yield wallet_service
    if not wallet_service.running:
        wallet_service.start()


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """Build clients (fast retries by default); all are closed after the test."""
    clients: list[WalletClient] = []

    def make(url: str, **options: object) -> WalletClient:
        options.setdefault("backoff", 0.01)
        options.setdefault("backoff_max", 0.05)
        client = WalletClient(url, **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def make_breaker() -> Iterator[BreakerFactory]:
    """`storage.breaker.make_breaker`; the Redis connections of every breaker are closed after the test."""
    breakers: list[pybreaker.CircuitBreaker] = []

    def make(name: str, **options: Any) -> pybreaker.CircuitBreaker:
        breaker = build_breaker(name, **options)
        breakers.append(breaker)
        return breaker

    yield make
    for breaker in breakers:
        close_breaker(breaker)


@pytest.fixture
def breaker_prefix(redis_prefix: str) -> str:
    return redis_prefix


def new_user() -> str:
    return f"u{uuid.uuid4().hex[:16]}"


def new_key(operation: str) -> str:
    return f"test:{operation}:{uuid.uuid4().hex}"


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def calls(wallet: WalletService, route: str) -> int:
    """How many calls of `route` the service received since its faults were last cleared."""
    counters = wallet.fault_counters()
    return int(counters.get("calls", {}).get(route, 0))


def atoms(value: Decimal) -> int:
    return int(value * UNIT)


def open_breaker(client: WalletClient, breaker: pybreaker.CircuitBreaker) -> None:
    """Fail calls until the breaker opens (the client must point at a wallet that does not answer)."""
    for _ in range(breaker.fail_max):
        with pytest.raises(WalletUnavailable):
            client.balances("nobody")
    assert breaker.current_state == pybreaker.STATE_OPEN


def timed_calls(client: WalletClient, count: int) -> list[float]:
    """Seconds each of `count` calls took to raise WalletUnavailable."""
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        with pytest.raises(WalletUnavailable):
            client.reserve(new_key("reserve"), "nobody", USDT, UNIT)
        durations.append(time.perf_counter() - started)
    return durations


# -- contract round trips ---------------------------------------------------------------------------------


def test_deposit_reserve_release_settle_withdraw_and_balances_round_trip_exactly_in_atoms(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client = make_client(wallet.url)
    buyer, seller = new_user(), new_user()
    fees_before = {asset: wallet.balance(FEES, asset) for asset in (USDT, BTC)}

    assert client.deposit(new_key("deposit"), buyer, USDT, 1000_12345678) == \
        WalletBalance(buyer, USDT, 1000_12345678, 0)
    assert client.deposit(new_key("deposit"), seller, BTC, 2 * UNIT) == \
        WalletBalance(seller, BTC, 2 * UNIT, 0)
    assert client.reserve(new_key("reserve"), buyer, USDT, 250_00000001) is True
    client.release(new_key("release"), buyer, USDT, 50_00000001)
    assert client.reserve(new_key("reserve"), seller, BTC, UNIT) is True
    client.settle(new_key("settle"), [
        (buyer, USDT, 0, -200 * UNIT), (buyer, BTC, 99_900_000, 0),
        (seller, BTC, 0, -UNIT), (seller, USDT, 199_80000000, 0),
        (FEES, BTC, 100_000, 0), (FEES, USDT, 20_000_000, 0),
    ])
    assert client.withdraw(new_key("withdraw"), buyer, USDT, 1) == WalletBalance(buyer, USDT, 800_12345677, 0)

    assert client.balances(buyer) == [WalletBalance(buyer, BTC, 99_900_000, 0),
                                      WalletBalance(buyer, USDT, 800_12345677, 0)]
    assert client.balances(seller) == [WalletBalance(seller, BTC, UNIT, 0),
                                       WalletBalance(seller, USDT, 199_80000000, 0)]
    assert wallet.balance(buyer, USDT) == (Decimal("800.12345677"), Decimal(0))
    assert wallet.balance(FEES, BTC)[0] - fees_before[BTC][0] == Decimal("0.001")
    assert wallet.balance(FEES, USDT)[0] - fees_before[USDT][0] == Decimal("0.2")
    everything = client.all_balances()
    assert WalletBalance(buyer, BTC, 99_900_000, 0) in everything
    assert WalletBalance(seller, USDT, 199_80000000, 0) in everything


def test_balances_of_a_user_who_never_had_any_are_empty(
        wallet: WalletService, make_client: ClientFactory) -> None:
    assert make_client(wallet.url).balances(new_user()) == []


def test_a_replayed_call_is_a_normal_success_that_moves_nothing_again(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, user, key = make_client(wallet.url), new_user(), new_key("deposit")
    first = client.deposit(key, user, USDT, 5 * UNIT)
    assert client.deposit(key, user, USDT, 5 * UNIT) == first
    assert wallet.balance(user, USDT) == (Decimal(5), Decimal(0))


def test_the_operation_of_a_key_is_the_services_record_and_none_for_an_unknown_key(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, key = make_client(wallet.url), new_key("deposit")
    client.deposit(key, new_user(), USDT, UNIT)
    record = client.operation(key)
    assert record is not None
    assert record["idempotency_key"] == key
    assert record["operation"] == "deposit"
    assert client.operation(new_key("never")) is None


# -- refusals and rejections: answers, never retried ------------------------------------------------------


def test_a_reserve_without_enough_funds_answers_false_once_and_a_retry_of_its_key_refuses_again(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, user, key = make_client(wallet.url), new_user(), new_key("reserve")
    client.deposit(new_key("deposit"), user, USDT, UNIT)

    assert client.reserve(key, user, USDT, UNIT + 1) is False
    assert calls(wallet, "reserve") == 1
    assert client.reserve(key, user, USDT, UNIT + 1) is False  # the refusal is stored with the key
    assert wallet.balance(user, USDT) == (Decimal(1), Decimal(0))


def test_a_withdraw_of_more_than_available_raises_insufficient_balance_without_retry(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, user = make_client(wallet.url), new_user()
    client.deposit(new_key("deposit"), user, BTC, UNIT)
    with pytest.raises(InsufficientBalance):
        client.withdraw(new_key("withdraw"), user, BTC, UNIT + 1)
    assert calls(wallet, "withdraw") == 1
    assert wallet.balance(user, BTC) == (Decimal(1), Decimal(0))


def test_a_release_of_more_than_locked_is_rejected_as_insufficient_locked(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, user = make_client(wallet.url), new_user()
    client.deposit(new_key("deposit"), user, USDT, 10 * UNIT)
    assert client.reserve(new_key("reserve"), user, USDT, 3 * UNIT)
    with pytest.raises(WalletRejected) as rejected:
        client.release(new_key("release"), user, USDT, 3 * UNIT + 1)
    assert (rejected.value.status, rejected.value.code) == (409, "INSUFFICIENT_LOCKED")
    assert calls(wallet, "release") == 1
    assert wallet.balance(user, USDT) == (Decimal(7), Decimal(3))


def test_a_settle_that_would_make_a_balance_negative_is_rejected_and_moves_nothing(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, buyer, seller = make_client(wallet.url), new_user(), new_user()
    client.deposit(new_key("deposit"), seller, BTC, UNIT)
    with pytest.raises(WalletRejected) as rejected:
        client.settle(new_key("settle"), [(seller, BTC, -UNIT, 0), (buyer, BTC, UNIT, 0),
                                          (seller, USDT, -1, 0)])
    assert (rejected.value.status, rejected.value.code) == (409, "NEGATIVE_BALANCE")
    assert calls(wallet, "settle") == 1
    assert wallet.balance(seller, BTC) == (Decimal(1), Decimal(0))
    assert wallet.balance(buyer, BTC) == (Decimal(0), Decimal(0))


def test_a_validation_error_is_rejected_at_once_and_never_retried(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client = make_client(wallet.url, retries=3)
    with pytest.raises(WalletRejected) as rejected:
        client.reserve(new_key("reserve"), new_user(), USDT, 0)
    assert (rejected.value.status, rejected.value.code) == (400, "VALIDATION_ERROR")
    assert calls(wallet, "reserve") == 1


def test_reusing_a_key_for_a_different_request_is_rejected(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, user, key = make_client(wallet.url), new_user(), new_key("deposit")
    client.deposit(key, user, USDT, UNIT)
    with pytest.raises(WalletRejected) as rejected:
        client.deposit(key, user, USDT, 2 * UNIT)
    assert (rejected.value.status, rejected.value.code) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert wallet.balance(user, USDT) == (Decimal(1), Decimal(0))


def test_wallet_errors_sit_in_the_storage_error_tree() -> None:
    assert issubclass(WalletUnavailable, StorageUnavailable)
    assert issubclass(WalletRejected, StorageError)
    assert not issubclass(WalletRejected, StorageUnavailable)


# -- retryable failures: same key, applied once -----------------------------------------------------------


def test_injected_503s_are_retried_with_the_same_key_and_applied_exactly_once(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, user, key = make_client(wallet.url, retries=3), new_user(), new_key("reserve")
    client.deposit(new_key("deposit"), user, USDT, 10 * UNIT)
    wallet.set_faults(fail_next=2, routes=["reserve"])

    assert client.reserve(key, user, USDT, 4 * UNIT) is True
    assert calls(wallet, "reserve") == 3
    assert wallet.fault_counters()["failed"] == 2
    assert client.operation(key) is not None
    assert wallet.balance(user, USDT) == (Decimal(6), Decimal(4))


def test_503s_after_the_movement_committed_are_retried_and_the_settle_applies_once(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, buyer, seller, key = make_client(wallet.url), new_user(), new_user(), new_key("settle")
    client.deposit(new_key("deposit"), seller, BTC, 3 * UNIT)
    wallet.set_faults(fail_next=2, after_apply=True, routes=["settle"])

    client.settle(key, [(seller, BTC, -UNIT, 0), (buyer, BTC, UNIT, 0)])
    assert calls(wallet, "settle") == 3
    assert wallet.balance(seller, BTC) == (Decimal(2), Decimal(0))
    assert wallet.balance(buyer, BTC) == (Decimal(1), Decimal(0))


def test_dropped_connections_are_retried_with_the_same_key_and_applied_once(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, user, key = make_client(wallet.url), new_user(), new_key("deposit")
    wallet.set_faults(drop_next=2, routes=["deposit"])

    assert client.deposit(key, user, USDT, 7 * UNIT) == WalletBalance(user, USDT, 7 * UNIT, 0)
    assert wallet.fault_counters()["dropped"] == 2
    assert wallet.balance(user, USDT) == (Decimal(7), Decimal(0))


def test_a_connection_dropped_after_the_movement_committed_is_retried_and_applied_once(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, user, key = make_client(wallet.url), new_user(), new_key("reserve")
    client.deposit(new_key("deposit"), user, USDT, 10 * UNIT)
    wallet.set_faults(drop_next=1, after_apply=True, routes=["reserve"])

    assert client.reserve(key, user, USDT, 4 * UNIT) is True
    assert wallet.fault_counters()["dropped"] == 1
    assert calls(wallet, "reserve") == 2
    assert wallet.balance(user, USDT) == (Decimal(6), Decimal(4))


def test_latency_above_the_timeout_times_out_every_attempt_and_the_key_completes_the_call_later(
        wallet: WalletService, make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    breaker = make_breaker("wallet", fail_max=10, reset_timeout=60)
    client = make_client(wallet.url, timeout=0.2, retries=2, breaker=breaker)
    user, key = new_user(), new_key("reserve")
    client.deposit(new_key("deposit"), user, USDT, 10 * UNIT)
    wallet.set_faults(latency_ms=600, routes=["reserve"])

    with pytest.raises(WalletUnavailable, match="gave up after 3 attempts"):
        client.reserve(key, user, USDT, 4 * UNIT)
    assert breaker.fail_counter == 3  # every timeout counts
    time.sleep(0.8)  # the service finishes the slow calls it received
    assert calls(wallet, "reserve") == 3
    assert wallet.fault_counters()["delayed"] == 3
    wallet.clear_faults()
    assert client.reserve(key, user, USDT, 4 * UNIT) is True
    assert wallet.balance(user, USDT) == (Decimal(6), Decimal(4))


def test_a_slow_answer_within_the_timeout_is_a_success(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client, user = make_client(wallet.url, timeout=1.0), new_user()
    wallet.set_faults(latency_ms=100, routes=["deposit"])
    assert client.deposit(new_key("deposit"), user, USDT, UNIT) == WalletBalance(user, USDT, UNIT, 0)
    assert calls(wallet, "deposit") == 1


def test_calls_from_many_threads_run_side_by_side_not_one_at_a_time_behind_the_breaker(
        wallet: WalletService, make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    client = make_client(wallet.url, breaker=make_breaker("wallet", fail_max=5, reset_timeout=60))
    users = [new_user() for _ in range(6)]
    wallet.set_faults(latency_ms=300, routes=["deposit"])
    threads = [threading.Thread(target=client.deposit, args=(new_key("deposit"), user, USDT, UNIT))
               for user in users]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.perf_counter() - started < 1.2  # one at a time would take 1.8 s
    assert [wallet.balance(user, USDT) for user in users] == [(Decimal(1), Decimal(0))] * len(users)


def test_retries_running_out_raise_wallet_unavailable(
        wallet: WalletService, make_client: ClientFactory) -> None:
    client = make_client(wallet.url, retries=2)
    wallet.set_faults(fail_next=5, routes=["deposit"])
    with pytest.raises(WalletUnavailable, match="gave up after 3 attempts"):
        client.deposit(new_key("deposit"), new_user(), USDT, UNIT)
    assert calls(wallet, "deposit") == 3


def test_a_transport_error_that_would_repeat_itself_is_counted_but_not_retried(
        wallet: WalletService, make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    breaker = make_breaker("wallet", fail_max=5, reset_timeout=60)
    client = make_client(wallet.url.replace("http://", "https://"), retries=3, breaker=breaker)
    with pytest.raises(WalletUnavailable, match=r"SSLError.*gave up after 1 attempt\)"):
        client.balances("nobody")  # TLS to a plain-HTTP server
    assert breaker.fail_counter == 1


# -- the breaker ------------------------------------------------------------------------------------------


def test_rejections_and_refusals_do_not_count_towards_opening_the_breaker(
        wallet: WalletService, make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    breaker = make_breaker("wallet", fail_max=2, reset_timeout=60)
    client, user = make_client(wallet.url, breaker=breaker), new_user()
    for _ in range(3):
        with pytest.raises(WalletRejected):
            client.reserve(new_key("reserve"), user, USDT, 0)
        assert client.reserve(new_key("reserve"), user, USDT, UNIT) is False
        with pytest.raises(InsufficientBalance):
            client.withdraw(new_key("withdraw"), user, USDT, UNIT)
    assert breaker.current_state == pybreaker.STATE_CLOSED
    assert breaker.fail_counter == 0


def test_retries_stop_at_once_when_a_failure_opens_the_breaker(
        wallet: WalletService, make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    breaker = make_breaker("wallet", fail_max=2, reset_timeout=60)
    client = make_client(wallet.url, retries=5, breaker=breaker)
    wallet.set_faults(fail_next=10, routes=["deposit"])
    with pytest.raises(WalletUnavailable, match="circuit breaker opened"):
        client.deposit(new_key("deposit"), new_user(), USDT, UNIT)
    assert calls(wallet, "deposit") == 2
    assert breaker.current_state == pybreaker.STATE_OPEN


def test_the_breaker_opens_after_fail_max_failures_and_then_answers_at_once_without_http(
        wallet: WalletService, make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    breaker = make_breaker("wallet", fail_max=3, reset_timeout=60)
    client = make_client(wallet.url, retries=0, timeout=0.5, breaker=breaker)
    wallet.stop()
    open_breaker(client, breaker)
    wallet.start()
    wallet.clear_faults()

    durations = timed_calls(client, 50)
    assert statistics.median(durations) < 0.002  # no HTTP: the median, as one call may wait for a CPU
    assert calls(wallet, "reserve") == 0


def test_after_reset_timeout_one_probe_closes_the_breaker_when_the_wallet_is_back(
        wallet: WalletService, make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    breaker = make_breaker("wallet", fail_max=2, reset_timeout=0.5)
    client, user = make_client(wallet.url, retries=0, breaker=breaker), new_user()
    wallet.stop()
    open_breaker(client, breaker)
    wallet.start()
    time.sleep(0.6)
    wallet.clear_faults()

    assert client.deposit(new_key("deposit"), user, USDT, UNIT) == WalletBalance(user, USDT, UNIT, 0)
    assert breaker.current_state == pybreaker.STATE_CLOSED
    assert calls(wallet, "deposit") == 1


def test_a_failed_probe_opens_the_breaker_again_for_another_reset_timeout(
        make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    breaker = make_breaker("wallet", fail_max=2, reset_timeout=0.3)
    client = make_client(closed_port_url(), retries=3, breaker=breaker)
    open_breaker(client, breaker)
    time.sleep(0.35)
    with pytest.raises(WalletUnavailable, match="circuit breaker opened"):
        client.balances("nobody")  # the probe: one attempt, no retry
    assert breaker.current_state == pybreaker.STATE_OPEN
    with pytest.raises(WalletUnavailable, match="circuit breaker open"):
        client.balances("nobody")


def test_while_half_open_only_one_probe_is_in_flight(
        wallet: WalletService, make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    breaker = make_breaker("wallet", fail_max=1, reset_timeout=60)
    client = make_client(wallet.url, breaker=breaker)
    breaker.open()
    breaker.half_open()
    wallet.set_faults(latency_ms=300, routes=["deposit"])
    results: list[object] = []

    def probe() -> None:
        results.append(client.deposit(new_key("deposit"), new_user(), USDT, UNIT))

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.1)
    with pytest.raises(WalletUnavailable, match="probe in flight"):
        client.deposit(new_key("deposit"), new_user(), USDT, UNIT)
    thread.join()
    assert len(results) == 1
    assert breaker.current_state == pybreaker.STATE_CLOSED


def test_a_metrics_listener_follows_the_breaker_through_open_half_open_and_closed(
        wallet: WalletService, make_client: ClientFactory, make_breaker: BreakerFactory) -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    breaker = make_breaker("wallet", fail_max=1, reset_timeout=0.3,
                           listeners=[metrics.breaker_listener("wallet")])
    seen: list[str] = []

    class Recorder(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: object, old_state: object,
                         new_state: pybreaker.CircuitBreakerState) -> None:
            seen.append(new_state.name)

    breaker.add_listener(Recorder())

    def gauge() -> float | None:
        return registry.get_sample_value("trade_engine_circuit_breaker_state", {"breaker": "wallet"})

    down = make_client(closed_port_url(), retries=0, breaker=breaker)
    with pytest.raises(WalletUnavailable):
        down.balances("nobody")
    assert gauge() == 1
    time.sleep(0.35)
    make_client(wallet.url, breaker=breaker).balances("nobody")
    assert seen == ["open", "half-open", "closed"]
    assert gauge() == 0


# -- breaker state shared through Redis -------------------------------------------------------------------


def test_two_breakers_with_one_name_share_state_through_redis_so_one_opening_opens_the_other(
        wallet: WalletService, make_client: ClientFactory, redis_url: str, breaker_prefix: str,
        make_breaker: BreakerFactory) -> None:
    first, second = (make_breaker("wallet", fail_max=2, reset_timeout=60, redis_url=redis_url,
                                  key_prefix=breaker_prefix) for _ in range(2))
    other = make_breaker("other", fail_max=2, reset_timeout=60, redis_url=redis_url,
                         key_prefix=breaker_prefix)
    open_breaker(make_client(closed_port_url(), retries=0, breaker=first), first)

    assert second.current_state == pybreaker.STATE_OPEN
    assert other.current_state == pybreaker.STATE_CLOSED
    durations = timed_calls(make_client(wallet.url, breaker=second), 50)
    assert statistics.median(durations) < 0.005
    assert calls(wallet, "reserve") == 0


def test_a_breaker_built_while_the_shared_one_is_open_reports_open_to_its_listeners_at_once(
        make_client: ClientFactory, make_breaker: BreakerFactory, redis_url: str,
        breaker_prefix: str) -> None:
    first = make_breaker("wallet", fail_max=1, reset_timeout=60, redis_url=redis_url,
                         key_prefix=breaker_prefix)
    open_breaker(make_client(closed_port_url(), retries=0, breaker=first), first)
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    make_breaker("wallet", fail_max=1, reset_timeout=60, redis_url=redis_url, key_prefix=breaker_prefix,
                 listeners=[metrics.breaker_listener("wallet")])
    assert registry.get_sample_value("trade_engine_circuit_breaker_state", {"breaker": "wallet"}) == 1


def test_a_shared_breaker_is_closed_for_all_by_one_probe(
        wallet: WalletService, make_client: ClientFactory, redis_url: str, breaker_prefix: str,
        make_breaker: BreakerFactory) -> None:
    first, second = (make_breaker("wallet", fail_max=1, reset_timeout=0.3, redis_url=redis_url,
                                  key_prefix=breaker_prefix) for _ in range(2))
    open_breaker(make_client(closed_port_url(), retries=0, breaker=first), first)
    with pytest.raises(WalletUnavailable, match="circuit breaker open"):
        make_client(wallet.url, breaker=second).balances("nobody")
    time.sleep(0.35)  # a sub-second reset_timeout holds: the opening time is kept to the microsecond

    make_client(wallet.url, breaker=second).balances("nobody")
    assert first.current_state == pybreaker.STATE_CLOSED
    assert make_client(wallet.url, breaker=first).balances("nobody") == []


def test_with_redis_unreachable_the_breaker_still_opens_after_fail_max_failures_and_fails_fast(
        make_client: ClientFactory, caplog: pytest.LogCaptureFixture, make_breaker: BreakerFactory) -> None:
    caplog.set_level(logging.WARNING, logger="tradeengine.storage.breaker")
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    breaker = make_breaker("wallet", fail_max=3, reset_timeout=60, redis_url=unreachable)
    client = make_client(closed_port_url(), retries=0, breaker=breaker)
    open_breaker(client, breaker)

    durations = timed_calls(client, 50)
    assert statistics.median(durations) < 0.002  # no HTTP: the median, as one call may wait for a CPU
    outages = [record for record in caplog.records if "Redis unreachable" in record.getMessage()]
    assert len(outages) == 1


def test_redis_going_away_mid_life_keeps_the_count_and_an_opening_is_published_when_it_answers_again(
        make_client: ClientFactory, redis_url: str, breaker_prefix: str, caplog: pytest.LogCaptureFixture,
        make_breaker: BreakerFactory) -> None:
    caplog.set_level(logging.WARNING, logger="tradeengine.storage.breaker")
    proxy = TcpProxy.before(redis_url, 6379)
    try:
        proxied = proxy.url(redis_url)
        breaker = make_breaker("wallet", fail_max=3, reset_timeout=60, redis_url=proxied,
                               key_prefix=breaker_prefix)
        witness = make_breaker("wallet", fail_max=3, reset_timeout=60, redis_url=redis_url,
                               key_prefix=breaker_prefix)
        client = make_client(closed_port_url(), retries=0, breaker=breaker)
        with pytest.raises(WalletUnavailable):
            client.balances("nobody")
        assert witness.fail_counter == 1

        proxy.cut()
        for _ in range(2):  # the count read from Redis carries on in memory
            with pytest.raises(WalletUnavailable):
                client.balances("nobody")
        assert breaker.current_state == pybreaker.STATE_OPEN
        assert witness.current_state == pybreaker.STATE_CLOSED
        storage = breaker._state_storage
        assert isinstance(storage, SharedBreakerStorage)
        assert storage.degraded

        proxy.restore()
        time.sleep(1.1)  # the storage tries Redis again once a second
        assert breaker.current_state == pybreaker.STATE_OPEN
        assert not storage.degraded
        assert witness.current_state == pybreaker.STATE_OPEN
    finally:
        proxy.cut()
    messages = [record.getMessage() for record in caplog.records]
    assert sum("Redis unreachable" in message for message in messages) == 1
    assert sum("Redis answers again after" in message for message in messages) == 1
