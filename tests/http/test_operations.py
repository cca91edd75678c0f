"""/health, /ready and /metrics answer as API.md's Operations section says."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import falcon.testing
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tradeengine.http.readiness import CheckFailed

AppFactory = Callable[..., falcon.testing.TestClient]


def test_health_answers_ok_with_the_version(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/health")
    assert result.status_code == 200
    assert result.json == {"status": "ok", "version": "9.9.9"}


def test_ready_answers_200_when_every_check_passes(make_client: AppFactory) -> None:
    client = make_client({"database": lambda: None, "actors": lambda: True})
    result = client.simulate_get("/ready")
    assert result.status_code == 200
    assert result.json == {"status": "ready", "checks": {"database": "ok", "actors": "ok"}}


def test_ready_answers_503_naming_the_failed_check_and_its_reason(make_client: AppFactory) -> None:
    def database() -> None:
        raise ConnectionRefusedError("connection refused\nmore detail nobody needs")

    def actors() -> None:
        raise CheckFailed("the actor system is not running")

    client = make_client({"database": database, "actors": actors, "redis": lambda: None})
    result = client.simulate_get("/ready")
    assert result.status_code == 503
    assert result.json == {"status": "not_ready", "checks": {
        "database": "unavailable: connection refused",
        "actors": "unavailable: the actor system is not running",
        "redis": "ok",
    }}


def test_redis_or_the_broker_unavailable_is_reported_but_leaves_the_process_ready(
        make_client: AppFactory) -> None:
    """Orders are taken without them (market data from the actors, events waiting in the outbox)."""
    def away() -> None:
        raise ConnectionRefusedError("connection refused")

    client = make_client({"database": lambda: None, "redis": away, "broker": away, "actors": lambda: None})
    result = client.simulate_get("/ready")
    assert result.status_code == 200
    assert result.json == {"status": "ready", "checks": {
        "database": "ok", "redis": "unavailable: connection refused",
        "broker": "unavailable: connection refused", "actors": "ok"}}


def test_ready_never_hangs_on_a_check_that_does_not_answer(make_client: AppFactory) -> None:
    release = threading.Event()
    client = make_client({"database": lambda: release.wait(10), "actors": lambda: None}, ready_timeout=0.2)
    try:
        started = time.monotonic()
        result = client.simulate_get("/ready")
        assert time.monotonic() - started < 1.0
        assert result.status_code == 503
        assert result.json["checks"] == {"database": "unavailable: no answer within 0.2 s", "actors": "ok"}
        again = client.simulate_get("/ready")  # the hung check is not started a second time
        assert again.json["checks"]["database"] == "unavailable: the previous check has not answered yet"
    finally:
        release.set()


def test_metrics_expose_the_request_counter_and_latency_histogram_after_a_request(
        make_client: AppFactory) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry)
    client.simulate_get("/health")
    client.simulate_get("/health")
    client.simulate_get("/test/fail/conflict")
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(result.text) for s in family.samples
    }
    health = (("method", "GET"), ("route", "/health"), ("status", "200"))
    conflict = (("method", "GET"), ("route", "/test/fail/{kind}"), ("status", "409"))
    assert samples[("trade_engine_http_requests_total", health)] == 2
    assert samples[("trade_engine_http_requests_total", conflict)] == 1
    assert samples[("trade_engine_http_request_duration_seconds_count",
                    (("method", "GET"), ("route", "/health")))] == 2
