"""An app built from injected parts, with a few test-only routes that fail in known ways."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import falcon
import falcon.asgi
import falcon.testing
import pytest
from prometheus_client import CollectorRegistry

from tests.actors.system_harness import database_pool
from tests.http.api_harness import ApiHarness, Trader, api_harness
from tradeengine.http.app import create_app
from tradeengine.http.errors import ErrorMapping
from tradeengine.http.readiness import Check
from tradeengine.storage import apply_migrations


class Boom(RuntimeError):
    """An error nothing maps: it must become a 500 with the one body."""


class RuleBroken(Exception):
    """Stands in for a domain error: carries its own code and field."""

    def __init__(self, message: str, code: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


class EchoResource:
    """POST echoes the JSON body back; the other responders fail on purpose."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"echo": await req.get_media()}


class FailingResource:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, kind: str) -> None:
        if kind == "unexpected":
            raise Boom("secret-connection-string password=hunter2")
        if kind == "conflict":
            raise falcon.HTTPConflict(description="pair BTC-USDT exists", code="PAIR_EXISTS")
        if kind == "rate":
            raise falcon.HTTPTooManyRequests(description="slow down", retry_after=3)
        if kind == "domain":
            raise RuleBroken("price 100.005 is not a multiple of tick size 0.01", "INVALID_TICK_SIZE",
                             "price")
        raise falcon.HTTPBadRequest(description=f"unknown kind {kind}")


AppFactory = Callable[..., falcon.testing.TestClient]


@pytest.fixture
def make_client() -> Iterator[AppFactory]:
    def build(checks: Mapping[str, Check] | None = None, **kwargs: Any) -> falcon.testing.TestClient:
        counter = itertools.count(1)
        kwargs.setdefault("registry", CollectorRegistry())
        kwargs.setdefault("request_ids", lambda: f"generated-{next(counter)}")
        kwargs.setdefault("logger", logging.getLogger("tests.http"))
        kwargs.setdefault("routes", [("/test/echo", EchoResource()),
                                     ("/test/fail/{kind}", FailingResource())])
        kwargs.setdefault("error_mappings", [ErrorMapping(RuleBroken, 422)])
        app = create_app(version="9.9.9", readiness_checks=checks or {"database": lambda: None}, **kwargs)
        return falcon.testing.TestClient(app)

    yield build


@pytest.fixture
def client(make_client: AppFactory) -> falcon.testing.TestClient:
    return make_client()


@pytest.fixture
def api(machine_pg_url: str) -> Iterator[ApiHarness]:
    """The API on a running actor system and a fresh migrated database on the machine's server.

    (The storage tests cover both servers; here one is enough and halves the time.)
    """
    apply_migrations(machine_pg_url)
    with database_pool(machine_pg_url) as pool, api_harness(pool) as harness:
        yield harness


@pytest.fixture
def alice(api: ApiHarness) -> Trader:
    """A trader holding 1 BTC and 100,000 USDT."""
    return api.user(funds={"BTC": "1", "USDT": "100000"})


@pytest.fixture
def bob(api: ApiHarness) -> Trader:
    """Another trader holding 1 BTC and 100,000 USDT."""
    return api.user(funds={"BTC": "1", "USDT": "100000"})
