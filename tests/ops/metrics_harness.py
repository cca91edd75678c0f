"""A worker built exactly as gunicorn's is (``build_worker``: real actors, real PostgreSQL), driven
through its WSGI app, and the samples of its ``/metrics`` parsed by prometheus_client's own parser."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import falcon.testing
from prometheus_client.parser import text_string_to_metric_families

from tradeengine.engine.units import to_atoms
from tradeengine.ops.server import WorkerParts, build_worker
from tradeengine.ops.settings import Settings
from tradeengine.storage.migrate import apply_migrations
from tradeengine.storage.users import UserRepository

ORDERS = "/api/v1/orders"
PAIR = "BTC-USDT"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, labels)."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the engine has not exported it (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    """How far one sample moved between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


@dataclass(frozen=True)
class Trader:
    """A user of the API with a key."""

    id: int
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class Engine:
    """The worker's parts and a test client on its app."""

    def __init__(self, parts: WorkerParts) -> None:
        self.parts = parts
        self.client = falcon.testing.TestClient(parts.app)
        self._users = UserRepository(parts.pool)
        self._names = 0

    def trader(self, **funds: str) -> Trader:
        """A new trader holding ``funds`` (asset → amount), deposited through the wallet."""
        self._names += 1
        user, key = self._users.create(f"trader{self._names}", "trader")
        for asset, amount in funds.items():
            self.parts.system.deposit(user.id, asset, to_atoms(Decimal(amount), field="amount"))
        return Trader(user.id, key)

    def place(self, trader: Trader, expect: int, **order: Any) -> dict[str, Any]:
        """POST one order (default: a BTC-USDT LIMIT) and check the answer's status."""
        body = {"symbol": PAIR, "type": "LIMIT", **order}
        response = self.client.simulate_post(ORDERS, json=body, headers=trader.headers)
        assert response.status_code == expect, response.text
        result: dict[str, Any] = response.json
        return result

    def scrape(self) -> Samples:
        """GET /metrics, parsed."""
        response = self.client.simulate_get("/metrics")
        assert response.status_code == 200
        return parse(response.text)

    def scrape_text(self) -> str:
        """GET /metrics, as exposed."""
        return self.client.simulate_get("/metrics").text

    def settled(self, ready: Callable[[Samples], bool], timeout: float = 5.0) -> Samples:
        """Scrape until ``ready`` holds (the reply thread's last figures are in), then once more."""
        deadline = time.monotonic() + timeout
        samples = self.scrape()
        while not ready(samples):
            assert time.monotonic() < deadline, "the session's figures never arrived in /metrics"
            time.sleep(0.02)
            samples = self.scrape()
        time.sleep(0.05)  # anything beyond the expected figures would show up now
        return self.scrape()


@contextmanager
def running_engine(database_url: str, **settings: Any) -> Iterator[Engine]:
    """A migrated database and a worker on it (rate limits off, more `settings`), closed afterwards."""
    apply_migrations(database_url)
    parts = build_worker(Settings(database_pool_size=4, rate_limit=0, public_rate_limit=0, **settings),
                         database_url)
    try:
        yield Engine(parts)
    finally:
        parts.close()
