"""Request ids on every response, CORS for configured origins only, one access-log line per request."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable

import falcon.asgi
import falcon.testing
import pytest

from tests.http.conftest import FailingResource

AppFactory = Callable[..., falcon.testing.TestClient]



def test_request_id_sent_by_the_client_is_echoed_on_success(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/health", headers={"X-Request-ID": "client-id.1:abc"})
    assert result.status_code == 200
    assert result.headers["x-request-id"] == "client-id.1:abc"


def test_request_id_is_generated_when_the_client_sends_none(client: falcon.testing.TestClient) -> None:
    assert client.simulate_get("/health").headers["x-request-id"] == "generated-1"
    assert client.simulate_get("/health").headers["x-request-id"] == "generated-2"


@pytest.mark.parametrize("sent", ["has space", "x" * 200, "<script>alert('x')</script>", "a=b; c=\"d\" {e}",
                                  "~!@#$%^&*()_+`-=[]\\|;:,./?", "12345"])
def test_any_printable_ascii_request_id_up_to_200_characters_is_echoed(
        client: falcon.testing.TestClient, sent: str) -> None:
    result = client.simulate_get("/missing", headers={"X-Request-ID": sent})
    assert result.headers["x-request-id"] == sent
    assert result.json["request_id"] == sent


@pytest.mark.parametrize("bad", ["", "   ", "x" * 201, "new\u00e9line", "tab\there", "bell\x07", "del\x7f",
                                 "nul\x00"])
def test_a_request_id_with_control_or_non_ascii_characters_or_too_long_is_replaced(
        client: falcon.testing.TestClient, bad: str) -> None:
    result = client.simulate_get("/health", headers={"X-Request-ID": bad})
    assert result.headers["x-request-id"] == "generated-1"


def test_an_echoed_request_id_is_logged_as_a_field_and_json_lines_escape_it(
        make_client: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    from tradeengine.ops.logconfig import JsonFormatter

    client = make_client()
    sent = 'a "quoted" <id> \\ with spaces'
    with caplog.at_level(logging.DEBUG, logger="tests.http.access"):
        client.simulate_get("/health", headers={"X-Request-ID": sent})
    (record,) = [r for r in caplog.records if r.name == "tests.http.access"]
    assert record.request_id == sent  # type: ignore[attr-defined]
    line = JsonFormatter().format(record)
    assert "\n" not in line and json.loads(line)["request_id"] == sent


def test_probes_are_logged_at_debug_and_what_clients_do_at_info(
        make_client: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    client = make_client()
    with caplog.at_level(logging.INFO, logger="tests.http.access"):
        client.simulate_get("/health")
        client.simulate_get("/missing")
    records = [r for r in caplog.records if r.name == "tests.http.access"]
    assert [(r.levelno, r.path) for r in records] == [(logging.INFO, "/missing")]  # type: ignore[attr-defined]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="tests.http.access"):
        client.simulate_get("/health")
    records = [r for r in caplog.records if r.name == "tests.http.access"]
    assert [(r.levelno, r.path) for r in records] == [(logging.DEBUG, "/health")]  # type: ignore[attr-defined]


def test_a_clients_mistake_is_one_access_line_carrying_the_error_and_a_503_adds_a_warning(
        make_client: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    from tradeengine.engine.errors import StorageUnavailable

    class DatabaseDown:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            raise StorageUnavailable("pool timeout")

    client = make_client(routes=[("/test/fail/{kind}", FailingResource()), ("/test/down", DatabaseDown())])
    with caplog.at_level(logging.DEBUG, logger="tests.http"):
        client.simulate_get("/test/fail/domain")
        client.simulate_get("/test/fail/conflict")
        client.simulate_get("/test/down")
    lines = [(r.name, r.levelname, r.getMessage(), getattr(r, "error_code", None), getattr(r, "error", None))
             for r in caplog.records]
    assert lines == [
        ("tests.http.access", "INFO", "GET /test/fail/domain 422", "INVALID_TICK_SIZE",
         "price 100.005 is not a multiple of tick size 0.01"),
        ("tests.http.access", "INFO", "GET /test/fail/conflict 409", "PAIR_EXISTS", "pair BTC-USDT exists"),
        ("tests.http", "WARNING", "GET /test/down answered 503 UNAVAILABLE (the database is unavailable; "
         "retry later); the cause: pool timeout", "UNAVAILABLE", None),
        ("tests.http.access", "INFO", "GET /test/down 503", "UNAVAILABLE",
         "the database is unavailable; retry later"),
    ]


def test_request_id_is_on_error_responses_and_in_their_body(client: falcon.testing.TestClient) -> None:
    for method, path in (("GET", "/missing"), ("PUT", "/health"), ("GET", "/test/fail/unexpected")):
        result = client.simulate_request(method, path, headers={"X-Request-ID": "err-7"})
        assert result.status_code >= 400
        assert result.headers["x-request-id"] == "err-7"
        assert result.json["request_id"] == "err-7"


def test_default_request_ids_are_unique_hex(make_client: AppFactory) -> None:
    from tradeengine.http.app import new_request_id

    client = make_client(request_ids=new_request_id)
    ids = {client.simulate_get("/health").headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_cors_headers_for_an_allowed_origin(make_client: AppFactory) -> None:
    client = make_client(cors_origins=("https://app.example",))
    result = client.simulate_get("/health", headers={"Origin": "https://app.example"})
    assert result.headers["access-control-allow-origin"] == "https://app.example"
    assert "X-Request-ID" in result.headers["access-control-expose-headers"]
    assert result.headers["vary"] == "Origin"  # a cache must not hand it to another origin


def test_cors_preflight_for_an_allowed_origin(make_client: AppFactory) -> None:
    client = make_client(cors_origins=("https://app.example",))
    result = client.simulate_options("/test/echo", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Content-Type, Authorization"})
    assert result.status_code == 200
    assert result.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in result.headers["access-control-allow-methods"]


def test_no_cors_headers_for_another_origin(make_client: AppFactory) -> None:
    client = make_client(cors_origins=("https://app.example",))
    result = client.simulate_get("/health", headers={"Origin": "https://evil.example"})
    assert result.status_code == 200
    assert "access-control-allow-origin" not in result.headers
    assert result.headers["vary"] == "Origin"


def test_no_cors_headers_when_no_origin_is_configured(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/health", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in result.headers


def test_star_allows_every_origin(make_client: AppFactory) -> None:
    client = make_client(cors_origins=("*",))
    result = client.simulate_get("/health", headers={"Origin": "https://anyone.example"})
    assert result.headers["access-control-allow-origin"] == "*"


def test_one_access_line_per_request_with_route_template_status_latency_and_request_id(
        make_client: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    ticks = itertools.count(start=10.0, step=0.25)
    client = make_client(clock=lambda: next(ticks))
    with caplog.at_level(logging.INFO, logger="tests.http.access"):
        client.simulate_get("/test/fail/conflict", headers={"X-Request-ID": "acc-1"})
        client.simulate_get("/nowhere")
    first, second = [r for r in caplog.records if r.name == "tests.http.access"]
    assert first.__dict__.items() >= {
        "method": "GET", "route": "/test/fail/{kind}", "path": "/test/fail/conflict", "status": 409,
        "latency_ms": 250.0, "request_id": "acc-1"}.items()
    assert (second.route, second.status) == ("<unmatched>", 404)  # type: ignore[attr-defined]
