"""API-key authentication: 401 without a valid key, 403 for a trader on an admin route, keys cached."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import falcon
import falcon.asgi
import falcon.testing
import pytest
from prometheus_client import CollectorRegistry

from tradeengine.http.app import create_app
from tradeengine.http.auth import ADMIN, PUBLIC, AuthMiddleware
from tradeengine.http.blocking import DEFAULT_LIMIT, limit_blocking_calls
from tradeengine.storage.errors import StorageUnavailable


@dataclasses.dataclass(frozen=True)
class User:
    user_id: int
    role: str


KEYS = {"te_trader": User(1001, "trader"), "te_admin": User(1, "admin")}


class Whoami:
    """Answers with the caller's id; declares nothing, so under /api/ it needs a trader key."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"user_id": req.context.principal.user_id}


class AdminOnly(Whoami):
    auth = ADMIN


class Market:
    auth = PUBLIC

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"pairs": []}


class Lookups:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, key: str) -> User | None:
        self.calls.append(key)
        return KEYS.get(key)


@pytest.fixture
def lookups() -> Lookups:
    return Lookups()


@pytest.fixture
def client(lookups: Lookups) -> falcon.testing.TestClient:
    app = create_app(version="1", readiness_checks={}, registry=CollectorRegistry(), authenticate=lookups,
                     routes=[("/api/v1/me", Whoami()), ("/api/v1/admin/x", AdminOnly()),
                             ("/api/v1/pairs", Market())])
    return falcon.testing.TestClient(app)


def _get(client: falcon.testing.TestClient, path: str, key: str | None = None) -> falcon.testing.Result:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.simulate_get(path, headers=headers)


@pytest.mark.parametrize("header", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer te_nobody"])
def test_a_missing_malformed_or_unknown_key_answers_401_unauthenticated(
        client: falcon.testing.TestClient, header: str | None) -> None:
    result = client.simulate_get("/api/v1/me", headers={"Authorization": header} if header else {})
    assert result.status_code == 401
    assert result.json["error"]["code"] == "UNAUTHENTICATED"
    assert result.headers["www-authenticate"] == "Bearer"
    assert result.json["request_id"]


def test_a_trader_key_reaches_trader_routes_as_its_user(client: falcon.testing.TestClient) -> None:
    result = _get(client, "/api/v1/me", "te_trader")
    assert (result.status_code, result.json) == (200, {"user_id": 1001})


def test_a_trader_on_an_admin_route_answers_403_and_an_admin_passes(
        client: falcon.testing.TestClient) -> None:
    refused = _get(client, "/api/v1/admin/x", "te_trader")
    assert refused.status_code == 403
    assert refused.json["error"]["code"] == "FORBIDDEN"
    assert _get(client, "/api/v1/admin/x", "te_admin").json == {"user_id": 1}
    assert _get(client, "/api/v1/me", "te_admin").status_code == 200  # admins trade too


def test_public_and_operational_routes_need_no_key(client: falcon.testing.TestClient) -> None:
    assert _get(client, "/api/v1/pairs").status_code == 200
    assert _get(client, "/health").status_code == 200


def test_unknown_routes_still_answer_404_without_a_key(client: falcon.testing.TestClient) -> None:
    assert _get(client, "/api/v1/nothing-here").status_code == 404


def test_a_key_is_looked_up_once_per_cache_period(lookups: Lookups) -> None:
    now = [0.0]
    auth = AuthMiddleware(lookups, cache_ttl=30.0, miss_ttl=2.0, clock=lambda: now[0])

    def lookup(key: str) -> object:
        return falcon.async_to_sync(auth._lookup, key)

    assert lookup("te_trader") == KEYS["te_trader"]
    assert lookup("te_trader") == KEYS["te_trader"]
    assert lookup("te_nobody") is None
    assert lookup("te_nobody") is None
    assert lookups.calls == ["te_trader", "te_nobody"]
    now[0] = 3.0  # past the miss period, within the hit period
    lookup("te_trader")
    lookup("te_nobody")
    assert lookups.calls == ["te_trader", "te_nobody", "te_nobody"]
    now[0] = 31.0
    lookup("te_trader")
    assert lookups.calls[-1] == "te_trader"


def test_a_lookup_in_flight_while_a_key_is_revoked_is_not_remembered(lookups: Lookups) -> None:
    revocations = [1]  # one revocation, made while the first lookup is in flight

    def racing(key: str) -> User | None:
        found = lookups(key)  # read before the revocation committed ...
        if revocations:
            auth.forget()
        revocations.clear()
        return found  # ... and answered after it was made

    auth = AuthMiddleware(racing, cache_ttl=30.0)
    for _ in range(3):
        assert falcon.async_to_sync(auth._lookup, "te_trader") == KEYS["te_trader"]
    assert lookups.calls == ["te_trader", "te_trader"]  # the first answer was not remembered, the second was


class Outage(Lookups):
    """The database: answers, or is down (raises), or stalls (`stall` seconds per lookup)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.stall = 0.0

    def __call__(self, key: str) -> User | None:
        self.calls.append(key)
        if self.down:
            raise StorageUnavailable("checking an API key: the database is down")
        time.sleep(self.stall)
        return KEYS.get(key)


def test_while_the_database_is_down_a_key_it_answered_for_still_authenticates() -> None:
    now = [0.0]
    database = Outage()
    auth = AuthMiddleware(database, cache_ttl=5.0, stale_ttl=600.0, clock=lambda: now[0])

    def lookup(key: str) -> object:
        return falcon.async_to_sync(auth._lookup, key)

    assert lookup("te_admin") == KEYS["te_admin"]
    database.down = True
    now[0] = 10.0  # past its cache period: the database is asked again, cannot answer
    assert lookup("te_admin") == KEYS["te_admin"]
    with pytest.raises(StorageUnavailable):  # a key not seen before the outage
        lookup("te_trader")
    now[0] = 700.0  # past the stale period
    with pytest.raises(StorageUnavailable):
        lookup("te_admin")
    assert database.calls == ["te_admin", "te_admin", "te_trader", "te_admin"]


def test_while_the_database_stalls_a_known_key_waits_only_the_grace_and_one_lookup_runs() -> None:
    now = [0.0]
    database = Outage()
    auth = AuthMiddleware(database, cache_ttl=5.0, stale_grace=0.1, clock=lambda: now[0])

    async def three_at_once() -> list[object]:
        return list(await asyncio.gather(*(auth._lookup("te_admin") for _ in range(3))))

    assert falcon.async_to_sync(auth._lookup, "te_admin") == KEYS["te_admin"]
    database.stall = 1.0
    now[0] = 10.0
    started = time.monotonic()
    assert falcon.async_to_sync(three_at_once) == [KEYS["te_admin"]] * 3
    assert time.monotonic() - started < 0.9  # the stale answer, not the stalled lookup's
    assert database.calls == ["te_admin", "te_admin"]  # the three shared one lookup


def test_a_key_revoked_through_the_api_is_never_served_stale() -> None:
    database = Outage()
    now = [0.0]
    auth = AuthMiddleware(database, cache_ttl=5.0, clock=lambda: now[0])
    assert falcon.async_to_sync(auth._lookup, "te_admin") == KEYS["te_admin"]
    auth.forget()  # what the revoking route does once the revocation is committed
    database.down = True
    now[0] = 10.0
    with pytest.raises(StorageUnavailable):
        falcon.async_to_sync(auth._lookup, "te_admin")


def test_a_key_lookup_past_the_blocking_limit_is_503_even_for_a_change_since_nothing_was_done() -> None:
    database = Outage()
    database.stall = 0.6
    app = create_app(version="1", readiness_checks={}, registry=CollectorRegistry(), authenticate=database,
                     routes=[("/api/v1/me", Whoami())], blocking_limit=0.2)
    try:
        client = falcon.testing.TestClient(app)
        for method in ("GET", "POST"):
            answer = client.simulate_request(method, "/api/v1/me",
                                             headers={"Authorization": "Bearer te_admin"})
            assert answer.status_code == 503, (method, answer.text)
            assert answer.json["error"]["code"] == "UNAVAILABLE"
    finally:
        limit_blocking_calls(DEFAULT_LIMIT)
