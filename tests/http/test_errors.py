"""Every error answer has the one body of API.md, with the request id, whatever raised it."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import falcon
import falcon.asgi
import falcon.testing
import pytest
from prometheus_client import CollectorRegistry

from tradeengine.actors.supervision import ActorUnavailable, ChildState
from tradeengine.engine import errors as engine_errors
from tradeengine.http import errors as errors_module
from tradeengine.http.admin import audited
from tradeengine.http.app import create_app
from tradeengine.http.blocking import DEFAULT_LIMIT, blocking, limit_blocking_calls
from tradeengine.http.errors import ErrorMapping, error_body
from tradeengine.storage import errors as storage_errors
from tradeengine.storage.users import SystemAccount, UserExists


def test_unknown_path_answers_404_not_found_in_the_one_shape(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/no/such/route")
    assert result.status_code == 404
    assert result.headers["content-type"].startswith("application/json")
    assert result.json == {"error": {"code": "NOT_FOUND", "message": "no route matches /no/such/route"},
                           "request_id": "generated-1"}


def test_wrong_method_answers_405_with_allow_header(client: falcon.testing.TestClient) -> None:
    result = client.simulate_delete("/health")
    assert result.status_code == 405
    assert "GET" in result.headers["allow"]
    assert result.json["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "DELETE" in result.json["error"]["message"]
    assert result.json["request_id"] == "generated-1"


def test_malformed_json_answers_400_malformed_json(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/test/echo", body=b'{"symbol": "BTC-USDT",',
                                  headers={"Content-Type": "application/json"})
    assert result.status_code == 400
    assert result.json["error"]["code"] == "MALFORMED_JSON"
    assert result.json["error"]["message"].startswith("the request body is not valid JSON")
    assert result.json["request_id"] == "generated-1"


def test_empty_json_body_answers_400_malformed_json(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/test/echo", body=b"", headers={"Content-Type": "application/json"})
    assert result.status_code == 400
    assert result.json["error"]["code"] == "MALFORMED_JSON"


def test_valid_json_is_read_and_written_with_the_configured_handler(
        client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/test/echo", json={"price": "50000.5"})
    assert result.status_code == 200
    assert result.json == {"echo": {"price": "50000.5"}}


def test_http_error_with_its_own_code_keeps_code_and_description(
        client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/test/fail/conflict")
    assert result.status_code == 409
    assert result.json == {"error": {"code": "PAIR_EXISTS", "message": "pair BTC-USDT exists"},
                           "request_id": "generated-1"}


def test_http_error_without_code_gets_one_from_its_status_and_keeps_its_headers(
        client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/test/fail/rate")
    assert result.status_code == 429
    assert result.headers["retry-after"] == "3"
    assert result.json["error"] == {"code": "RATE_LIMITED", "message": "slow down"}


def test_plain_bad_request_is_a_validation_error(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/test/fail/other")
    assert result.status_code == 400
    assert result.json["error"] == {"code": "VALIDATION_ERROR", "message": "unknown kind other"}


def test_mapped_application_error_answers_its_status_with_its_code_and_field(
        client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/test/fail/domain")
    assert result.status_code == 422
    assert result.json == {
        "error": {"code": "INVALID_TICK_SIZE", "message": "price 100.005 is not a multiple of tick size 0.01",
                  "field": "price"},
        "request_id": "generated-1",
    }


def test_unexpected_exception_answers_500_json_and_logs_the_traceback_with_the_request_id(
        client: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tests.http"):
        result = client.simulate_get("/test/fail/unexpected", headers={"X-Request-ID": "trace-me-42"})
    assert result.status_code == 500
    assert result.json["error"]["code"] == "INTERNAL_ERROR"
    assert result.json["request_id"] == "trace-me-42"
    assert "hunter2" not in result.text
    assert result.headers["x-request-id"] == "trace-me-42"
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.request_id == "trace-me-42"  # type: ignore[attr-defined]
    assert record.exc_info is not None and record.exc_info[0] is not None
    assert record.exc_info[0].__name__ == "Boom"


def test_a_later_mapping_for_a_subclass_overrides_its_base_by_mro() -> None:
    class Base(Exception):
        code = "BASE"

    class Specific(Base):
        code = "SPECIFIC"

    class Raiser:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, which: str) -> None:
            raise Specific("specific") if which == "specific" else Base("base")

    app = create_app(version="1", readiness_checks={}, registry=CollectorRegistry(),
                     routes=[("/raise/{which}", Raiser())],
                     error_mappings=[ErrorMapping(Base, 422), ErrorMapping(Specific, 409)])
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/raise/base").status_code == 422
    specific = client.simulate_get("/raise/specific")
    assert specific.status_code == 409
    assert specific.json["error"]["code"] == "SPECIFIC"


def test_mapping_with_a_fixed_message_hides_the_exception_text_and_sets_retry_after() -> None:
    class DatabaseDown(Exception):
        pass

    class Raiser:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            raise DatabaseDown("connection to 10.1.2.3:5432 refused")

    mapping = ErrorMapping(DatabaseDown, 503, "UNAVAILABLE", "the database is unavailable", retry_after=2)
    app = create_app(version="1", readiness_checks={}, registry=CollectorRegistry(),
                     routes=[("/down", Raiser())], error_mappings=[mapping])
    result = falcon.testing.TestClient(app).simulate_get("/down")
    assert result.status_code == 503
    assert result.headers["retry-after"] == "2"
    assert result.json["error"] == {"code": "UNAVAILABLE", "message": "the database is unavailable"}


def test_an_outage_logs_one_warning_per_cause_every_ten_seconds_counting_those_left_out(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(errors_module.time, "monotonic", lambda: now[0])
    app = create_app(version="1", readiness_checks={}, registry=CollectorRegistry(), routes=[
        ("/down", _Raise(storage_errors.StorageUnavailable("connection to 10.1.2.3:5432 refused"))),
        ("/failed", _Raise(ActorUnavailable("pair:BTC-USDT is failed", child="pair:BTC-USDT",
                                             state=ChildState.FAILED)))])
    client = falcon.testing.TestClient(app)
    caplog.set_level(logging.WARNING, logger="tradeengine.http")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    for _ in range(50):
        assert client.simulate_get("/down").status_code == 503
    assert client.simulate_get("/failed").status_code == 503  # another cause has its own line
    assert len(warnings()) == 2 and "10.1.2.3:5432 refused" in warnings()[0]
    now[0] += 10.0
    assert client.simulate_get("/down").status_code == 503
    assert len(warnings()) == 3
    assert warnings()[2].endswith("(49 more answered so in the last 10 s were not logged)")


class _Raise:
    """Raises the exception it was given."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raise self.error


def _answer_to(error: Exception) -> falcon.testing.Result:
    app = create_app(version="1", readiness_checks={}, registry=CollectorRegistry(),
                     routes=[("/x", _Raise(error))])
    return falcon.testing.TestClient(app).simulate_get("/x")


@pytest.mark.parametrize(("error", "status", "code", "retry_after"), [
    (engine_errors.StorageUnavailable("pool timeout at 10.0.0.5"), 503, "UNAVAILABLE", "1"),
    (engine_errors.EngineUnavailable("pair BTC-USDT restarting"), 503, "UNAVAILABLE", "1"),
    (engine_errors.EngineTimeout("no answer from writer"), 504, "ENGINE_TIMEOUT", None),
    (storage_errors.StorageUnavailable("database unavailable (connection refused)"), 503, "UNAVAILABLE",
     "1"),
    (storage_errors.CommitOutcomeUnknown("the writer process exited with status -9"), 504, "ENGINE_TIMEOUT",
     None),
])
def test_infrastructure_errors_map_to_503_or_504_without_leaking_their_text(
        error: Exception, status: int, code: str, retry_after: str | None) -> None:
    result = _answer_to(error)
    assert result.status_code == status
    assert result.json["error"]["code"] == code
    assert str(error) not in result.text
    assert result.headers.get("retry-after") == retry_after


def test_a_wallet_service_outage_tells_the_client_it_is_the_wallet_service() -> None:
    result = _answer_to(engine_errors.WalletServiceUnavailable("wallet service reserve: breaker open"))
    assert (result.status_code, result.headers.get("retry-after")) == (503, "1")
    assert result.json["error"] == {"code": "UNAVAILABLE",
                                    "message": "the wallet service is unavailable; retry later"}


@pytest.mark.parametrize(("state", "child", "message", "retry_after"), [
    (ChildState.FAILED, "pair:BTC-USDT",
     "the pair BTC-USDT has failed and takes no commands until an operator restarts it; retry later", "30"),
    (ChildState.RESTARTING, "pair:ETH-USDT", "the pair ETH-USDT is restarting; retry later", "1"),
    (ChildState.STOPPED, "pair:ETH-USDT", "the pair ETH-USDT is unavailable; retry later", "1"),
    (ChildState.FAILED, "wallet", "the engine is unavailable; retry later", "30"),
])
def test_an_actor_that_cannot_take_a_command_is_a_503_naming_the_pair_and_whether_it_comes_back(
        state: ChildState, child: str, message: str, retry_after: str) -> None:
    """A failed actor comes back only when an operator restarts it: its Retry-After is longer."""
    result = _answer_to(ActorUnavailable(f"{child} is {state.value}: connection to 10.0.0.5 refused",
                                         child=child, state=state))
    assert (result.status_code, result.headers.get("retry-after")) == (503, retry_after)
    assert result.json["error"] == {"code": "UNAVAILABLE", "message": message}


@pytest.mark.parametrize(("error", "status", "code", "field"), [
    (engine_errors.InvalidTickSize("price 100.005 is not a multiple of 0.01", field="price"), 422,
     "INVALID_TICK_SIZE", "price"),
    (engine_errors.InsufficientBalance("needs 10 USDT, 5 available"), 422, "INSUFFICIENT_BALANCE", None),
    (engine_errors.ValidationError("side must be BUY or SELL", field="side"), 400, "VALIDATION_ERROR",
     "side"),
    (engine_errors.OrderNotFound("no order 42"), 404, "NOT_FOUND", None),
    (engine_errors.OrderNotCancellable("order 42 is FILLED"), 409, "ORDER_NOT_CANCELLABLE", None),
    (engine_errors.IllegalStatusTransition("FILLED -> OPEN"), 500, "INTERNAL_ERROR", None),
    (engine_errors.UnknownSymbol("unknown symbol DOGE-EUR", field="symbol"), 404, "UNKNOWN_SYMBOL", "symbol"),
    (engine_errors.PairNotTrading("BTC-USDT is halted"), 409, "PAIR_NOT_TRADING", None),
    (engine_errors.PairExists("BTC-USDT exists", field="symbol"), 409, "PAIR_EXISTS", "symbol"),
    (UserExists("alice exists", field="name"), 409, "USER_EXISTS", "name"),
    (SystemAccount("user 1 holds no keys"), 409, "SYSTEM_ACCOUNT", None),
])
def test_domain_errors_map_by_class_with_their_code_and_field(
        error: Exception, status: int, code: str, field: str | None) -> None:
    result = _answer_to(error)
    assert result.status_code == status
    assert result.json["error"]["code"] == code
    assert result.json["error"].get("field") == field


def test_a_duplicate_client_order_id_answers_409_naming_the_existing_order() -> None:
    error = engine_errors.DuplicateClientOrderId("client_order_id my-1 is already used",
                                                 field="client_order_id", order_id="245015042036027392")
    result = _answer_to(error)
    assert result.status_code == 409
    assert result.json["error"]["code"] == "DUPLICATE_CLIENT_ORDER_ID"
    assert result.json["error"]["details"] == {"order_id": "245015042036027392"}


def test_error_body_has_field_only_when_given() -> None:
    assert error_body("X", "m", "r") == {"error": {"code": "X", "message": "m"}, "request_id": "r"}
    assert error_body("X", "m", "r", "price")["error"]["field"] == "price"



class _Slow:
    """Reads and changes through a blocking call that takes a second."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await blocking(time.sleep, 1.0)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await blocking(time.sleep, 1.0)


def test_a_blocking_call_past_the_limit_answers_a_read_503_and_a_change_504_in_time() -> None:
    app = create_app(version="1", readiness_checks={}, registry=CollectorRegistry(),
                     routes=[("/slow", _Slow())], blocking_limit=0.2)
    try:
        client = falcon.testing.TestClient(app)
        started = time.monotonic()
        read = client.simulate_get("/slow")
        assert time.monotonic() - started < 0.9
        assert read.status_code == 503 and read.json["error"]["code"] == "UNAVAILABLE"
        assert read.headers["retry-after"] == "1"
        change = client.simulate_post("/slow")
        assert change.status_code == 504 and change.json["error"]["code"] == "ENGINE_TIMEOUT"
        assert "outcome is unknown" in change.json["error"]["message"]
    finally:
        limit_blocking_calls(DEFAULT_LIMIT)


class _SlowChange:
    """An admin's change that takes longer than the blocking limit; `made` once it is done."""

    def __init__(self) -> None:
        self.made = threading.Event()

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.principal = SimpleNamespace(user_id=7)  # what the auth middleware sets

        def change() -> str:
            time.sleep(0.6)
            self.made.set()
            return "X"

        await audited(req, change, lambda result: f"set {result}")


def test_an_admin_change_answered_504_is_still_audited_when_it_is_made(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tradeengine.http.audit")
    slow = _SlowChange()
    app = create_app(version="1", readiness_checks={}, registry=CollectorRegistry(),
                     routes=[("/change", slow)], blocking_limit=0.2)
    try:
        answer = falcon.testing.TestClient(app).simulate_post("/change")
        assert answer.status_code == 504 and not slow.made.is_set()
        assert slow.made.wait(5)

        def audit_lines() -> list[tuple[str, str]]:
            return [(r.levelname, r.getMessage()) for r in caplog.records
                    if r.name == "tradeengine.http.audit"]

        deadline = time.monotonic() + 5
        while len(audit_lines()) < 2 and time.monotonic() < deadline:  # the line follows `made`
            time.sleep(0.01)
        lines = audit_lines()
        assert lines == [
            ("WARNING", "admin 7: POST /change answered 504 before its change was made; it may still be made "
                        "(a line follows if it is)"),
            ("INFO", "admin 7 set X (after its request was answered 504)"),
        ]
    finally:
        limit_blocking_calls(DEFAULT_LIMIT)
