"""The API as a client sees it, in process: a running actor system on a real database behind the app.

``ApiHarness`` builds the app exactly as the gunicorn worker does (``create_app`` with the routes of
:mod:`tradeengine.http.routes`) on a started ``ActorSystem`` and a real PostgreSQL, and talks to it
through falcon's test client. Users are real users with real keys; deposits go through the wallet.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import falcon.testing
import psycopg_pool
from prometheus_client import CollectorRegistry

from tradeengine.actors.system import ActorSystem
from tradeengine.engine.units import to_atoms
from tradeengine.http.app import create_app
from tradeengine.http.readiness import actors_check
from tradeengine.http.routes import api_endpoints
from tradeengine.storage.marketdata import MarketDataReader
from tradeengine.storage.users import UserRepository


@dataclasses.dataclass(frozen=True)
class Trader:
    """A user of the API: id and key."""

    id: int
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header of this user."""
        return {"Authorization": f"Bearer {self.key}"}


class ApiHarness:
    """The app on a running system; requests as one user or another."""

    def __init__(self, system: ActorSystem, pool: psycopg_pool.ConnectionPool,
                 market_data: MarketDataReader | None = None) -> None:
        self.system = system
        self.pool = pool
        self.users = UserRepository(pool)
        self._names = itertools.count(1)
        app = create_app(version="test", readiness_checks={"actors": actors_check(system)},
                         registry=CollectorRegistry(),
                         authenticate=self.users.authenticate,
                         endpoints=api_endpoints(system=system, pool=pool, market_data=market_data))
        self.client = falcon.testing.TestClient(app)

    def user(self, role: str = "trader", funds: dict[str, str] | None = None) -> Trader:
        """A new user with a key, holding ``funds`` (asset → amount) deposited through the wallet."""
        name = f"{role}{next(self._names)}"
        user, key = self.users.create(name, role)
        for asset, amount in (funds or {}).items():
            self.system.deposit(user.id, asset, to_atoms(Decimal(amount), field="amount"))
        return Trader(user.id, name, key)

    def request(self, method: str, path: str, user: Trader | None = None, *, json: Any = None,
                params: dict[str, Any] | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> falcon.testing.Result:
        """One request, as ``user`` when given."""
        all_headers = {**(user.headers if user else {}), **(headers or {})}
        return self.client.simulate_request(method, path, json=json, params=params, body=body,
                                            headers=all_headers)

    def get(self, path: str, user: Trader | None = None, **kwargs: Any) -> falcon.testing.Result:
        return self.request("GET", path, user, **kwargs)

    def post(self, path: str, user: Trader | None = None, **kwargs: Any) -> falcon.testing.Result:
        return self.request("POST", path, user, **kwargs)

    def patch(self, path: str, user: Trader | None = None, **kwargs: Any) -> falcon.testing.Result:
        return self.request("PATCH", path, user, **kwargs)

    def delete(self, path: str, user: Trader | None = None, **kwargs: Any) -> falcon.testing.Result:
        return self.request("DELETE", path, user, **kwargs)

    def balances(self, user: Trader) -> dict[str, tuple[Decimal, Decimal]]:
        """The user's balances as the API shows them: asset → (available, locked)."""
        response = self.get("/api/v1/balances", user)
        assert response.status_code == 200, response.text
        return {b["asset"]: (Decimal(b["available"]), Decimal(b["locked"]))
                for b in response.json["balances"]}


@contextmanager
def api_harness(pool: psycopg_pool.ConnectionPool, reader: MarketDataReader | None = None,
                **options: Any) -> Iterator[ApiHarness]:
    """An ApiHarness on a started system (stopped afterwards); ``reader`` reads the Redis mirror."""
    system = ActorSystem(pool, **options)
    system.start()
    try:
        yield ApiHarness(system, pool, reader)
    finally:
        system.stop()


def error_of(response: Any, status: int | None = None) -> dict[str, Any]:
    """The ``error`` object of an answer in the one error shape (its status checked, when given)."""
    if status is not None:
        assert response.status_code == status, response.text
    body: dict[str, Any] = response.json
    assert set(body) == {"error", "request_id"}
    return body["error"]  # type: ignore[no-any-return]
