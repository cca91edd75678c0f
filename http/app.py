"""The ASGI application factory.

``create_app`` builds a falcon 4 ASGI ``App`` from injected parts only: it reads no environment and no
settings; ``tradeengine.ops.server`` builds the parts from the settings in the gunicorn worker.

Later issues add their resources through ``routes`` (``[("/api/v1/orders", OrdersResource(...)),
("/api/v1/orders/{order_id}", OrdersResource(...), "item"), ...]``) and answer their own exceptions
through ``error_mappings`` (``ErrorMapping(UnknownSymbol, 404)``); the project's error tree is already
mapped by :func:`tradeengine.http.errors.default_error_mappings`, and a mapping passed here for the same
class replaces the default. The error body stays the one of :mod:`tradeengine.http.errors`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import falcon
import falcon.asgi
import falcon.media
import orjson
from prometheus_client import CollectorRegistry

from .api import Endpoint, OpenApiResource, RequestShapeMiddleware, openapi_document, operations_endpoints
from .auth import AuthMiddleware, Principal
from .blocking import limit_blocking_calls
from .errors import ErrorMapping, register_error_handlers
from .middleware import REQUEST_ID_HEADER, AccessLogMiddleware, HttpMetrics, RequestIdMiddleware
from .operations import HealthResource, MetricsResource, ReadyResource
from .ratelimit import RateLimitMiddleware
from .readiness import Check, Readiness

#: ``(uri_template, resource)`` or ``(uri_template, resource, suffix)`` (falcon's responder suffix).
Route = tuple[str, object] | tuple[str, object, str]


def new_request_id() -> str:
    """A fresh random request id (32 hex digits, 128 random bits)."""
    return os.urandom(16).hex()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default)


def _json_handlers() -> dict[str, falcon.media.BaseHandler]:
    json = falcon.media.JSONHandler(dumps=_dumps, loads=orjson.loads)
    return {falcon.MEDIA_JSON: json}


def _cors(origins: Sequence[str]) -> list[Any]:
    exposed = [REQUEST_ID_HEADER, "Retry-After"]
    if "*" in origins:
        return [falcon.CORSMiddleware(allow_origins="*", expose_headers=exposed)]
    return [falcon.CORSMiddleware(allow_origins=list(origins), expose_headers=exposed), _VaryByOrigin()]


class _VaryByOrigin:
    """With named origins an answer depends on the request's Origin (echoed, or not): tell caches so."""

    async def process_response(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: object,
                               req_succeeded: bool) -> None:
        resp.append_header("Vary", "Origin")


def create_app(
    *,
    version: str,
    readiness_checks: Mapping[str, Check],
    registry: CollectorRegistry,
    cors_origins: Sequence[str] = (),
    logger: logging.Logger | None = None,
    request_ids: Callable[[], str] = new_request_id,
    clock: Callable[[], float] = time.perf_counter,
    ready_timeout: float = 1.5,
    routes: Iterable[Route] = (),
    endpoints: Iterable[Endpoint] = (),
    error_mappings: Iterable[ErrorMapping] = (),
    authenticate: Callable[[str], Principal | None] | None = None,
    rate_limit: RateLimitMiddleware | None = None,
    blocking_limit: float | None = None,
) -> falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]:
    """Build the ASGI app: operational routes, ``routes``, middleware and the one error shape.

    ``readiness_checks`` are named callables that raise when their part is unusable (see
    :mod:`tradeengine.http.readiness`); ``registry`` receives the HTTP metrics and is what ``/metrics``
    exposes; ``clock`` times requests; ``request_ids`` makes ids for requests that bring none;
    ``authenticate`` maps an API key to its user (see :mod:`tradeengine.http.auth`); ``rate_limit``
    (after authentication) refuses clients over their budget (:mod:`tradeengine.http.ratelimit`);
    ``endpoints`` are the API's routes (:mod:`tradeengine.http.routes`), served and documented in
    ``/openapi.json``; ``blocking_limit`` bounds every blocking call of a request (seconds, see
    :mod:`tradeengine.http.blocking`).
    """
    if blocking_limit is not None:
        limit_blocking_calls(blocking_limit)
    log = logger if logger is not None else logging.getLogger("tradeengine.http")
    metrics = HttpMetrics(registry)
    middleware: list[Any] = [
        RequestIdMiddleware(request_ids),
        AccessLogMiddleware(log.getChild("access"), metrics, clock),
    ]
    if cors_origins:
        middleware.extend(_cors(cors_origins))
    if authenticate is not None:
        middleware.append(AuthMiddleware(authenticate))
    if rate_limit is not None:
        middleware.append(rate_limit)  # after auth: it counts per req.context.principal
    middleware.append(RequestShapeMiddleware())  # after both: a refusal of a request is a 400 of a caller
    app = falcon.asgi.App(middleware=middleware)
    handlers = _json_handlers()
    app.req_options.media_handlers.update(handlers)
    app.resp_options.media_handlers.update(handlers)
    register_error_handlers(app, log, error_mappings)

    app.add_route("/health", _answer_head(HealthResource(version)))
    app.add_route("/ready", _answer_head(ReadyResource(Readiness(readiness_checks, ready_timeout))))
    app.add_route("/metrics", _answer_head(MetricsResource(registry)))
    endpoints = list(endpoints)
    for endpoint in endpoints:
        if endpoint.resource is not None:
            app.add_route(endpoint.path, _answer_head(endpoint.resource))
    document = openapi_document([*operations_endpoints(), *endpoints], title="trade-engine", version=version)
    app.add_route("/openapi.json", _answer_head(OpenApiResource(document)))
    for route in routes:
        template, resource, *suffix = route
        app.add_route(template, _answer_head(resource, *suffix), **({"suffix": suffix[0]} if suffix else {}))
    return app


def _answer_head(resource: object, suffix: str | None = None) -> object:
    """Let ``resource`` answer HEAD wherever it answers GET (RFC 9110: the same headers, no body: the
    framework sends none for HEAD), unless it answers HEAD itself."""
    tail = f"_{suffix}" if suffix else ""
    on_get = getattr(resource, f"on_get{tail}", None)
    if on_get is not None and not hasattr(resource, f"on_head{tail}"):
        setattr(resource, f"on_head{tail}", on_get)
    return resource
