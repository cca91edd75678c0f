"""Request middleware: the request id on every response, one access-log line and metrics per request.

Order in the app: :class:`RequestIdMiddleware` first (so error handlers and the access log see the id),
then :class:`AccessLogMiddleware`, then CORS. falcon runs ``process_response`` in reverse order and also
after an error handler has rendered an error, so 404/405/500 answers get the header and the log line too.

While a request is answered its id is also :func:`current_request_id` (a context variable of the
request's task, carried into the threads its blocking calls run on): the Exchange's observer picks it
up when the request sends a command to the actors, and :class:`RequestIdLogFilter` stamps it on every
log record made meanwhile, so one order can be followed from its HTTP request through the pair and the
commit.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Callable
from typing import Any

import falcon
import falcon.asgi
from prometheus_client import CollectorRegistry, Counter, Histogram

REQUEST_ID_HEADER = "X-Request-ID"

# A client's request id is echoed when it is printable ASCII (spaces included) of at most 200 characters:
# nothing in it can break a header or a log line (no control character: no CR/LF). The JSON log lines
# escape it like any string; it is never put into a format string.
MAX_REQUEST_ID = 200
_SANE_REQUEST_ID = re.compile(rf"[\x20-\x7e]{{1,{MAX_REQUEST_ID}}}")

# The route label of requests no route matched: a fixed value keeps the metric's label set bounded.
UNMATCHED_ROUTE = "<unmatched>"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("tradeengine_request_id",
                                                                         default=None)


def current_request_id() -> str | None:
    """The id of the request being answered in this context (None outside a request)."""
    return _REQUEST_ID.get()


class RequestIdLogFilter(logging.Filter):
    """Give every record made while a request is answered that request's ``request_id`` (install it on
    the handlers: a logger's filter would see only that logger's own records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = _REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def request_id_of(req: falcon.asgi.Request) -> str | None:
    """The id :class:`RequestIdMiddleware` gave this request (None before it ran)."""
    return getattr(req.context, "request_id", None)


def note_error(req: falcon.asgi.Request, code: str, message: str) -> None:
    """Have the access line of this request carry the error it was answered with."""
    req.context.error = (code, message)


def route_of(req: falcon.asgi.Request) -> str:
    """The matched URI template (``/api/v1/orders/{id}``), never the raw path."""
    return req.uri_template or UNMATCHED_ROUTE


class RequestIdMiddleware:
    """Echo the client's ``X-Request-ID`` (printable ASCII and spaces, at most 200 characters), or make one
    (when it sent none, or one with control or non-ASCII characters, or longer); send it back on every
    response."""

    def __init__(self, new_request_id: Callable[[], str]) -> None:
        self._new_request_id = new_request_id

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        # HTTP's optional whitespace around a value is not part of it (servers strip it already).
        sent = (req.get_header(REQUEST_ID_HEADER) or "").strip(" \t")
        sane = _SANE_REQUEST_ID.fullmatch(sent) is not None
        req.context.request_id = sent if sane else self._new_request_id()
        req.context.request_id_token = _REQUEST_ID.set(req.context.request_id)

    async def process_response(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: object, req_succeeded: bool) -> None:
        request_id = request_id_of(req)
        if request_id is not None:
            resp.set_header(REQUEST_ID_HEADER, request_id)
        token = getattr(req.context, "request_id_token", None)
        if token is not None:
            try:
                _REQUEST_ID.reset(token)
            except ValueError:  # set in another context: clear it instead
                _REQUEST_ID.set(None)


class HttpMetrics:
    """The request counter and latency histogram, registered in the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "trade_engine_http_requests", "HTTP requests answered, by route, method and status.",
            ("route", "method", "status"), registry=registry,
        )
        self.duration = Histogram(
            "trade_engine_http_request_duration_seconds", "Time to answer an HTTP request, by route.",
            ("route", "method"), buckets=_LATENCY_BUCKETS, registry=registry,
        )
        # (route, method, status) → its counter and histogram children: ``labels()`` validates, converts
        # and takes the metric's lock on every call; the label set is bounded (route templates).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and record its latency."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.duration.labels(route, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
"""Routes probes and scrapers call every few seconds: their answers are logged at DEBUG, not INFO (an
error answer still at INFO), so the access log at INFO holds what clients did."""


class AccessLogMiddleware:
    """One log line and one metrics sample per request, with its route template and latency (at INFO; the
    probes' and scrapers' routes, :data:`QUIET_ROUTES`, at DEBUG unless they answer an error). A request
    answered with an error carries its ``error_code`` and ``error`` (the message) on that line: a
    client's mistake is told in this one line, not in a second one."""

    def __init__(self, logger: logging.Logger, metrics: HttpMetrics, clock: Callable[[], float]) -> None:
        self._logger = logger
        self._metrics = metrics
        self._clock = clock

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.started = self._clock()

    async def process_response(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: object, req_succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        seconds = max(self._clock() - started, 0.0) if started is not None else 0.0
        route = route_of(req)
        status = resp.status_code
        method = req.method
        self._metrics.observe(route, method, status, seconds)
        logger = self._logger
        level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
        if not logger.isEnabledFor(level):
            return
        path = req.path
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "latency_ms": round(seconds * 1000.0, 3),
            "request_id": request_id_of(req),
        }
        error = getattr(req.context, "error", None)
        if error is not None:
            fields["error_code"], fields["error"] = error
        # logger.info(...) without its findCaller() (a walk up the stack per line): the record names this
        # method as its source, which it is.
        logger.handle(logger.makeRecord(logger.name, level, __file__, _ACCESS_LOG_LINE,
                                        "%s %s %d", (method, path, status), None, "process_response",
                                        fields))


_ACCESS_LOG_LINE = AccessLogMiddleware.process_response.__code__.co_firstlineno
