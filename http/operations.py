"""Operational routes: ``/health`` (process alive), ``/ready`` (parts usable), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import falcon
import falcon.asgi
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .blocking import blocking
from .readiness import Readiness


class HealthResource:
    """``GET /health`` → 200 ``{"status": "ok", "version": ...}`` while the process answers at all."""

    def __init__(self, version: str) -> None:
        self._version = version

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok", "version": self._version}


class ReadyResource:
    """``GET /ready`` → 200 when every check passes, else 503 naming the failed checks."""

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        ready, checks = await blocking(self._readiness.run)
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else "not_ready", "checks": checks}


class MetricsResource:
    """``GET /metrics`` → the registry in the Prometheus text exposition format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        # off the loop: the collectors ask the actors and read PostgreSQL (each within its own deadline)
        resp.data = await blocking(generate_latest, self._registry)
