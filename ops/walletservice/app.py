"""The wallet service's WSGI app: the routes of CONTRACT.md over a :class:`WalletStore`.

``create_app(pool, faults=...)`` reads no environment. Resources decode the request
(:mod:`.models`), call the store and answer; they never build error bodies: every error is answered
by the handlers registered in :func:`_register_error_handlers`, in the contract's one shape. With
``faults`` the app also serves ``/_faults`` and is wrapped in :class:`FaultInjection`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import falcon
import orjson
import psycopg_pool

from tradeengine.storage.errors import StorageError

from .errors import NotFound, WalletServiceError
from .faults import FaultInjection, Faults, WsgiApp
from .models import KEY_PATTERN, FaultsBody, Transfer, decode_json, settle_command, transfer_command
from .store import Answer, WalletStore

REPLAYED_HEADER = "Idempotent-Replayed"
#: Largest request body read (a settle of 16 movements is well under 4 KiB).
MAX_BODY = 64 * 1024

_KEY = re.compile(KEY_PATTERN)
_log = logging.getLogger(__name__)


def create_app(pool: psycopg_pool.ConnectionPool, *, faults: bool,
               logger: logging.Logger | None = None) -> WsgiApp:
    """The wallet service over ``pool``; with ``faults`` the fault-injection routes are on."""
    store = WalletStore(pool)
    app = falcon.App()
    for name in ("reserve", "release", "deposit", "withdraw"):
        app.add_route(f"/v1/{name}", TransferResource(store, name))
    app.add_route("/v1/settle", SettleResource(store))
    balances = BalancesResource(store)
    app.add_route("/v1/balances", balances)
    app.add_route("/v1/balances/{user_id}", balances, suffix="user")
    app.add_route("/v1/operations/{idempotency_key}", OperationResource(store))
    app.add_route("/health", HealthResource(store))
    _register_error_handlers(app, logger or _log)
    if not faults:
        return app
    injected = Faults()
    app.add_route("/_faults", FaultsResource(injected))
    return FaultInjection(app, injected)


def _answer(resp: falcon.Response, body: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(body)


def _body(req: falcon.Request) -> bytes:
    if req.content_length is not None and req.content_length > MAX_BODY:
        raise falcon.HTTPPayloadTooLarge(description=f"a body of at most {MAX_BODY} bytes is accepted")
    raw: bytes = req.bounded_stream.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise falcon.HTTPPayloadTooLarge(description=f"a body of at most {MAX_BODY} bytes is accepted")
    return raw


def _answer_applied(resp: falcon.Response, answer: Answer) -> None:
    if answer.replayed:
        resp.set_header(REPLAYED_HEADER, "true")
    _answer(resp, answer.body, answer.status)


class TransferResource:
    """POST /v1/reserve, /v1/release, /v1/deposit, /v1/withdraw."""

    def __init__(self, store: WalletStore, operation: Transfer) -> None:
        self._store = store
        self._operation: Transfer = operation

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Apply the transfer once per idempotency key."""
        _answer_applied(resp, self._store.apply(transfer_command(self._operation, _body(req))))


class SettleResource:
    """POST /v1/settle."""

    def __init__(self, store: WalletStore) -> None:
        self._store = store

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Apply every movement, or none, once per idempotency key."""
        _answer_applied(resp, self._store.apply(settle_command(_body(req))))


class BalancesResource:
    """GET /v1/balances (every non-zero balance) and GET /v1/balances/{user_id}."""

    def __init__(self, store: WalletStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every non-zero balance, for reconciliation."""
        _answer(resp, {"balances": self._store.all_balances()})

    def on_get_user(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        """One user's non-zero balances, by asset."""
        _answer(resp, {"user_id": user_id, "balances": self._store.balances_of(user_id)})


class OperationResource:
    """GET /v1/operations/{idempotency_key}."""

    def __init__(self, store: WalletStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, idempotency_key: str) -> None:
        """The stored operation, or 404."""
        found = self._store.operation(idempotency_key) if _KEY.match(idempotency_key) else None
        if found is None:
            raise NotFound(f"no operation with idempotency key {idempotency_key!r}")
        _answer(resp, found)


class HealthResource:
    """GET /health: 200 while the database answers, 503 otherwise."""

    def __init__(self, store: WalletStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Check the database and answer ``{"status": "ok"}``."""
        self._store.ping()
        _answer(resp, {"status": "ok"})


class FaultsResource:
    """/_faults: PUT sets the faults, GET shows them and the counters, DELETE clears both."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The faults in force and the counters."""
        _answer(resp, self._faults.view())

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Replace the faults in force."""
        _answer(resp, self._faults.replace(decode_json(_body(req), FaultsBody)))

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        """No faults, counters to zero."""
        _answer(resp, self._faults.clear())


# -- errors: one place, one shape ----------------------------------------------------------------------

_CODES = {400: "VALIDATION_ERROR", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


def _register_error_handlers(app: falcon.App[Any, Any], logger: logging.Logger) -> None:
    def unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
        logger.error("%s %s failed", req.method, req.path, exc_info=ex)
        _answer(resp, {"error": {"code": "INTERNAL_ERROR", "message": "internal error; retry with the "
                                 "same idempotency key"}}, 500)

    def http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: Any) -> None:
        if isinstance(ex, falcon.HTTPRouteNotFound):
            message = f"no route matches {req.path}"
        elif isinstance(ex, falcon.HTTPMethodNotAllowed):
            message = f"method {req.method} is not allowed on {req.path}"
        else:
            message = ex.description or ex.title or str(ex.status_code)
        if ex.headers:
            resp.set_headers(ex.headers)
        code = _CODES.get(ex.status_code, "HTTP_ERROR")
        _answer(resp, {"error": {"code": code, "message": message}}, ex.status_code)

    def wallet_error(req: falcon.Request, resp: falcon.Response, ex: WalletServiceError,
                     params: Any) -> None:
        if ex.status >= 500:
            logger.warning("%s %s answered %d: %s", req.method, req.path, ex.status, ex)
            resp.set_header("Retry-After", "1")
        _answer(resp, ex.body(), ex.status)

    def storage_error(req: falcon.Request, resp: falcon.Response, ex: StorageError, params: Any) -> None:
        logger.error("%s %s failed in the database: %s", req.method, req.path, ex)
        _answer(resp, {"error": {"code": "INTERNAL_ERROR", "message": "the database refused the call; "
                                 "retry with the same idempotency key"}}, 500)

    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(falcon.HTTPError, http_error)
    app.add_error_handler(WalletServiceError, wallet_error)
    app.add_error_handler(StorageError, storage_error)
