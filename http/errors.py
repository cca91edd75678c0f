"""Every error answer of the HTTP API is built here, in ONE shape (API.md "Errors")::

    {"error": {"code": "UPPER_SNAKE", "message": "...", "field": "..."?}, "request_id": "..."}

Handlers are registered per exception base class with ``app.add_error_handler``; falcon picks the most
specific one by walking the exception's MRO, so a mapping for a base class covers its whole branch and a
mapping for a subclass overrides it. Resources never build error bodies: they raise.

- ``falcon.HTTPError`` (routing 404/405, media errors, anything a resource raises): its status, its
  ``code`` when it has one (``falcon.HTTPError(..., code="...")``), else a code derived from the status;
  its headers (``Allow``, ``Retry-After``, ``WWW-Authenticate``) are kept.
- :class:`ErrorMapping` entries: an application exception class answered with a fixed status. The code
  and field come from the exception's ``code`` / ``field`` attributes (domain errors carry them) unless
  the mapping fixes the code; ``details`` (a mapping) is passed through; ``message`` on the mapping
  replaces the exception text for errors whose text may hold internals (database addresses, ...).
  :func:`default_error_mappings` holds the table for the project's own error tree; ``create_app``
  appends the caller's mappings, so a later entry for the same class replaces the default.
- any other exception: 500 ``INTERNAL_ERROR``, logged with its traceback and the request id; the
  exception text never reaches the client.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import falcon
import falcon.asgi

from tradeengine.actors.supervision import ActorUnavailable, ChildState
from tradeengine.engine import errors as engine_errors
from tradeengine.storage import errors as storage_errors
from tradeengine.storage.users import LastAdminKey, SystemAccount, UserExists

from .blocking import NoAnswerInTime
from .middleware import note_error, request_id_of
from .models import ErrorDetail

# Codes for falcon errors that carry none of their own, by status.
CODES_BY_STATUS = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    409: "CONFLICT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "UNPROCESSABLE_ENTITY",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "UNAVAILABLE",
    504: "ENGINE_TIMEOUT",
}

INTERNAL_ERROR_MESSAGE = "internal error; quote the request id when reporting it"

ECHO_LIMIT = 64
"""The most characters of a client's value (an id, a symbol, a path) an error message repeats."""


def echoed(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` as an error message repeats it: cut after ``limit`` characters (marked with "…"), so a
    client sending a 5,000-character id does not get it back whole."""
    return text if len(text) <= limit else f"{text[:limit]}…"


def not_found(what: str, value: str) -> str:
    """The message of a 404 for the ``what`` named ``value`` by the path (``"order 12 not found"``); an
    empty path segment (``/api/v1/orders/``) names none, and the message says so."""
    if not value:
        return f"the path names no {what}: its {what} segment is empty"
    return f"{what} {echoed(value)} not found"


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorMapping:
    """Answer exceptions of class ``error`` (and its subclasses) with ``status``.

    Without ``code`` the exception's own ``code`` attribute is used (domain errors carry one); with it,
    the mapping's code wins. ``message`` replaces the exception text where that text must not be shown
    (a function of the exception: a message built from its fields, never from its text);
    ``retry_after`` (seconds, or a function of the exception) adds a ``Retry-After`` header; ``log_level``
    >= ERROR logs the traceback.
    """

    error: type[Exception]
    status: int
    code: str | None = None
    message: str | Callable[[Exception], str] | None = None
    retry_after: int | Callable[[Exception], int] | None = None
    log_level: int = logging.INFO


def error_body(code: str, message: str, request_id: str | None, field: str | None = None,
               details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one error body of the API."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    if details:
        error["details"] = dict(details)
    return {"error": error, "request_id": request_id}


_TIMEOUT_MESSAGE = ("the engine did not answer in time; the outcome is unknown: look the change up before "
                    "retrying (an order by its client_order_id)")


_NO_ANSWER_MESSAGE = "the engine did not answer in time; retry later"
_LOST_COMMIT_MESSAGE = ("the connection to the database was lost while the change was being committed; the "
                        "outcome is unknown: look the change up before retrying (an order by its "
                        "client_order_id)")


def default_error_mappings() -> list[ErrorMapping]:
    """The statuses of the project's own error tree (``tradeengine.engine.errors``, storage errors).

    Order matters only between a class and its subclasses: falcon picks the most specific handler.
    Infrastructure errors get a fixed message (their text may name hosts) and ``Retry-After``; bugs
    surfacing as errors (illegal transition, broken invariant) answer like any unexpected error.
    """
    return [
        _bug(engine_errors.TradeEngineError),
        ErrorMapping(engine_errors.DomainError, 422),
        ErrorMapping(engine_errors.ValidationError, 400),
        ErrorMapping(engine_errors.OrderNotFound, 404),
        ErrorMapping(engine_errors.DuplicateOrderId, 409),
        ErrorMapping(engine_errors.OrderNotCancellable, 409),
        ErrorMapping(engine_errors.OrderNotAmendable, 409),
        ErrorMapping(engine_errors.UnknownSymbol, 404),
        ErrorMapping(engine_errors.DuplicateClientOrderId, 409),
        ErrorMapping(engine_errors.PairNotTrading, 409),
        ErrorMapping(engine_errors.PairExists, 409),
        ErrorMapping(UserExists, 409),
        ErrorMapping(SystemAccount, 409),
        ErrorMapping(LastAdminKey, 409),
        _bug(engine_errors.IllegalStatusTransition),
        _bug(engine_errors.InvariantViolation),
        _unavailable(engine_errors.InfrastructureError, "engine"),
        _unavailable(engine_errors.StorageUnavailable, "database"),
        _unavailable(engine_errors.EngineUnavailable, "engine"),
        _unavailable(engine_errors.WalletServiceUnavailable, "wallet service"),
        ErrorMapping(ActorUnavailable, 503, "UNAVAILABLE", _actor_unavailable, retry_after=_actor_retry_after,
                     log_level=logging.WARNING),
        ErrorMapping(engine_errors.EngineTimeout, 504, "ENGINE_TIMEOUT", _TIMEOUT_MESSAGE,
                     log_level=logging.WARNING),
        # The storage layer has its own tree; its errors reach here when a read goes to a repository.
        _bug(storage_errors.StorageError),
        _unavailable(storage_errors.StorageUnavailable, "database"),
        ErrorMapping(storage_errors.CommitOutcomeUnknown, 504, "ENGINE_TIMEOUT", _LOST_COMMIT_MESSAGE,
                     log_level=logging.WARNING),
    ]


def _actor_unavailable(ex: Exception) -> str:
    """What a client is told when an actor cannot take its command: which pair, and whether it comes back
    by itself (restarting) or only once an operator restarts it (failed)."""
    kind, _, symbol = (getattr(ex, "child", None) or "").partition(":")
    if kind != "pair" or not symbol:
        return "the engine is unavailable; retry later"
    state = getattr(ex, "state", None)
    if state is ChildState.FAILED:
        return (f"the pair {symbol} has failed and takes no commands until an operator restarts it; "
                "retry later")
    if state is ChildState.RESTARTING:
        return f"the pair {symbol} is restarting; retry later"
    return f"the pair {symbol} is unavailable; retry later"


FAILED_PAIR_RETRY_AFTER = 30
"""The ``Retry-After`` of a failed pair's 503 (seconds): it comes back only when an operator restarts it,
so clients are asked not to poll it every second."""


def _actor_retry_after(ex: Exception) -> int:
    return FAILED_PAIR_RETRY_AFTER if getattr(ex, "state", None) is ChildState.FAILED else 1


def _bug(error: type[Exception]) -> ErrorMapping:
    return ErrorMapping(error, 500, "INTERNAL_ERROR", INTERNAL_ERROR_MESSAGE, log_level=logging.ERROR)


def _unavailable(error: type[Exception], what: str) -> ErrorMapping:
    return ErrorMapping(error, 503, "UNAVAILABLE", f"the {what} is unavailable; retry later", retry_after=1,
                        log_level=logging.WARNING)


def register_error_handlers(app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response],
                            logger: logging.Logger, mappings: Iterable[ErrorMapping] = ()) -> None:
    """Install the handlers that give every error the one shape; ``mappings`` add application errors."""
    app.add_error_handler(Exception, _UnexpectedErrorHandler(logger))
    app.add_error_handler(falcon.HTTPError, _handle_http_error)
    app.add_error_handler(falcon.MediaMalformedError, _handle_malformed_json)
    app.add_error_handler(falcon.MediaNotFoundError, _handle_malformed_json)
    for mapping in [*default_error_mappings(), *mappings]:
        app.add_error_handler(mapping.error, _MappedErrorHandler(mapping, logger))
    # A blocking call without an answer in time: a read may be retried (503); a change's outcome is
    # unknown (504).
    app.add_error_handler(NoAnswerInTime, _ByMethodHandler(
        read=_MappedErrorHandler(ErrorMapping(NoAnswerInTime, 503, "UNAVAILABLE", _NO_ANSWER_MESSAGE,
                                              retry_after=1, log_level=logging.WARNING), logger),
        change=_MappedErrorHandler(ErrorMapping(NoAnswerInTime, 504, "ENGINE_TIMEOUT", _TIMEOUT_MESSAGE,
                                                log_level=logging.WARNING), logger)))


def _render(req: falcon.asgi.Request, resp: falcon.asgi.Response, status: int, body: dict[str, Any]) -> None:
    resp.status = status
    resp.media = body
    note_error(req, body["error"]["code"], body["error"]["message"])


async def _handle_http_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: falcon.HTTPError,
                             params: dict[str, Any]) -> None:
    status = ex.status_code
    if isinstance(ex, falcon.HTTPRouteNotFound):
        message = f"no route matches {echoed(req.path, 2 * ECHO_LIMIT)}"
    elif isinstance(ex, falcon.HTTPMethodNotAllowed):
        allowed = dict(ex.headers or {}).get("Allow", "")
        message = (f"method {echoed(req.method)} is not allowed on {echoed(req.path, 2 * ECHO_LIMIT)}; "
                   f"allowed: {allowed}")
    else:
        message = ex.description or ex.title or str(status)
    code = ex.code if isinstance(ex.code, str) and ex.code else CODES_BY_STATUS.get(status, "HTTP_ERROR")
    if ex.headers:
        resp.set_headers(ex.headers)
    _render(req, resp, status, error_body(code, message, request_id_of(req)))


async def _handle_malformed_json(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                                 ex: falcon.HTTPError, params: dict[str, Any]) -> None:
    if isinstance(ex, falcon.MediaNotFoundError):
        message = "the request body is empty; a JSON document is required"
    else:
        cause = ex.__cause__
        message = "the request body is not valid JSON" + (f": {cause}" if cause else "")
    _render(req, resp, 400, error_body("MALFORMED_JSON", message, request_id_of(req)))


class _ByMethodHandler:
    """Answers as `read` for GET and HEAD, as `change` for the other methods."""

    def __init__(self, *, read: _MappedErrorHandler, change: _MappedErrorHandler) -> None:
        self._read = read
        self._change = change

    async def __call__(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception,
                       params: dict[str, Any]) -> None:
        handler = self._read if req.method in ("GET", "HEAD") else self._change
        await handler(req, resp, ex, params)


# An outage answers every request 503 for as long as it lasts: one WARNING line per cause this often,
# the next one counting those left out (each request keeps its access line).
WARNING_EVERY_SECONDS = 10.0


class _Throttle:
    """Admits one line per key every `every` seconds; an admitted line learns how many were left out."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # key → (when a line was admitted, left out since)

    def admit(self, key: str) -> int | None:
        """None to leave this line out, else how many were left out since the last one admitted."""
        now = time.monotonic()
        with self._lock:
            admitted, left_out = self._last.get(key, (None, 0))
            if admitted is not None and now - admitted < self._every:
                self._last[key] = (admitted, left_out + 1)
                return None
            self._last[key] = (now, 0)
            return left_out


class _MappedErrorHandler:
    """Answers one application exception branch with its mapped status."""

    def __init__(self, mapping: ErrorMapping, logger: logging.Logger) -> None:
        self._mapping = mapping
        self._logger = logger
        self._throttle = _Throttle(WARNING_EVERY_SECONDS)

    async def __call__(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception,
                       params: dict[str, Any]) -> None:
        mapping = self._mapping
        code, message, field, details = describe(mapping, ex)
        # a client's mistake is told by the access line alone; a bug always has its line
        left_out = (None if mapping.log_level <= logging.INFO else 0 if mapping.log_level >= logging.ERROR
                    else self._throttle.admit(type(ex).__qualname__))
        if left_out is not None:
            traceback = ex if mapping.log_level >= logging.ERROR else None
            more = (f" ({left_out} more answered so in the last {WARNING_EVERY_SECONDS:g} s were not logged)"
                    if left_out else "")
            # what the client was told, then the cause (which it was not: it may name hosts and internals)
            self._logger.log(mapping.log_level, "%s %s answered %d %s (%s); the cause: %s%s", req.method,
                             req.path, mapping.status, code, message, ex, more, exc_info=traceback,
                             extra={"request_id": request_id_of(req), "error_code": code})
        wait = mapping.retry_after
        if wait is not None:
            resp.set_header("Retry-After", str(wait if isinstance(wait, int) else wait(ex)))
        _render(req, resp, mapping.status, error_body(code, message, request_id_of(req), field, details))


def describe(mapping: ErrorMapping, ex: Exception) -> tuple[str, str, str | None, Mapping[str, Any] | None]:
    """The code, message, field and details an exception answers with under ``mapping``."""
    own_code = getattr(ex, "code", None)
    code = mapping.code or (own_code if isinstance(own_code, str) and own_code else None)
    code = code or CODES_BY_STATUS.get(mapping.status, "ERROR")
    client_error = mapping.status < 500  # a field or details only ever point at the client's input
    field = getattr(ex, "field", None) if client_error else None
    details = getattr(ex, "details", None) if client_error else None
    message = mapping.message(ex) if callable(mapping.message) else mapping.message or str(ex) or code
    return (code, message, field if isinstance(field, str) else None,
            details if isinstance(details, Mapping) else None)


def error_detail(ex: Exception) -> ErrorDetail:
    """The inner part of the one error shape for ``ex``, as a batch item carries it.

    Project errors are described by their mapping (the most specific class in the MRO), falcon errors
    by their status and code, anything else as an internal error.
    """
    if isinstance(ex, falcon.HTTPError):
        status = ex.status_code
        code = ex.code if isinstance(ex.code, str) and ex.code else CODES_BY_STATUS.get(status, "HTTP_ERROR")
        return ErrorDetail(code=code, message=ex.description or ex.title or str(status))
    mappings = _default_mappings_by_class()
    for cls in type(ex).__mro__:
        mapping = mappings.get(cls)
        if mapping is not None:
            code, message, field, details = describe(mapping, ex)
            return ErrorDetail(code=code, message=message, field=field,
                               details=None if details is None else dict(details))
    return ErrorDetail(code="INTERNAL_ERROR", message=INTERNAL_ERROR_MESSAGE)


@functools.cache
def _default_mappings_by_class() -> dict[type[Exception], ErrorMapping]:
    """:func:`default_error_mappings` by exception class, built once (a batch may describe 100 errors)."""
    return {m.error: m for m in default_error_mappings()}


class _UnexpectedErrorHandler:
    """500 with the one body; the traceback goes to the log with the request id, never to the client."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    async def __call__(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception,
                       params: dict[str, Any]) -> None:
        request_id = request_id_of(req)
        self._logger.error("unhandled %s in %s %s", type(ex).__name__, req.method, req.path,
                           exc_info=ex, extra={"request_id": request_id, "route": req.uri_template})
        _render(req, resp, 500, error_body("INTERNAL_ERROR", INTERNAL_ERROR_MESSAGE, request_id))
