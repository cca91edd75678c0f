"""API-key authentication: who a request acts for, and which role a route needs.

A resource states what it needs in a class attribute ``auth``: ``PUBLIC`` (market data), ``TRADER``
(any user with a key: traders and admins) or ``ADMIN``. Under ``/api/`` a resource that states nothing
needs ``TRADER`` — the middleware fails closed; operational routes (``/health``, ``/ready``,
``/metrics``) are outside ``/api/`` and public.

``Authorization: Bearer <key>``: a missing, malformed or unknown key answers 401 ``UNAUTHENTICATED``
(with ``WWW-Authenticate: Bearer``), a trader on an admin route 403 ``FORBIDDEN``. The principal is put
in ``req.context.principal``.

Keys are looked up through the injected ``authenticate`` (the database, on a thread: see
:mod:`tradeengine.http.blocking`) and remembered for
``cache_ttl`` seconds (unknown keys for ``miss_ttl``), so a busy client costs one lookup per TTL, not
one per request. A route that revokes keys calls the function :func:`key_forgetter` gives it, from the
thread that revoked the key, once the revocation is committed: this process forgets every key it
remembered, so a key revoked through the API is refused from then on, also when the revocation was
made after its request was answered 504; one revoked in the database by another process
(``trade-engine users revoke-key``) is refused once its entry expires, within ``cache_ttl``.

While the database cannot answer (it is down, or gives no answer within ``stale_grace``), a key it
answered for before (within ``stale_ttl`` past its cache period) authenticates as it did: during an
outage an operator can still list the actors (``trade-engine actors``, ``GET /api/v1/admin/actors``)
and a client its balances and book as the engine holds them, instead of every request answering 503
before it reaches its route. A key nobody used before the outage is refused 503 as before; a key
revoked through the API is forgotten at once, so it is never served stale. One lookup per key runs at
a time: requests with the same key share it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import falcon
import falcon.asgi

from tradeengine.engine.errors import EngineTimeout
from tradeengine.engine.errors import StorageUnavailable as UnavailableInfrastructure

from .blocking import NoAnswerInTime, blocking

# How long a known key is remembered: the longest a key revoked by another process keeps working here.
KEY_CACHE_SECONDS = 5.0
# While the database cannot answer (down, or no answer within STALE_KEY_GRACE seconds), a key it answered
# for within this many seconds past its cache period still authenticates as it did.
STALE_KEY_SECONDS = 3600.0
STALE_KEY_GRACE = 1.0
PUBLIC = "public"
TRADER = "trader"
ADMIN = "admin"


class Principal(Protocol):
    """What the middleware needs of an authenticated user."""

    @property
    def user_id(self) -> int:
        """The user's id."""

    @property
    def role(self) -> str:
        """trader or admin."""


class AuthMiddleware:
    """Authenticate API keys and enforce each resource's ``auth`` requirement."""

    def __init__(self, authenticate: Callable[[str], Principal | None], *,
                 cache_ttl: float = KEY_CACHE_SECONDS, miss_ttl: float = 2.0, cache_size: int = 10_000,
                 stale_ttl: float = STALE_KEY_SECONDS, stale_grace: float = STALE_KEY_GRACE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._authenticate = authenticate
        self._cache_ttl = cache_ttl
        self._miss_ttl = miss_ttl
        self._cache_size = cache_size
        self._stale_ttl = stale_ttl
        self._stale_grace = stale_grace
        self._fetches: dict[bytes, asyncio.Future[Principal | None]] = {}  # on the loop's thread only
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._forgotten = 0  # how many times the cache was emptied: a lookup begun before keeps nothing

    async def process_resource(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: object, params: dict[str, Any]) -> None:
        """Refuse the request unless its key satisfies the resource's requirement."""
        if resource is None or req.method == "OPTIONS":
            return  # routing answers 404/405; CORS preflights carry no credentials
        req.context.forget_keys = self.forget
        need = getattr(resource, "auth", TRADER if req.path.startswith("/api/") else PUBLIC)
        if need == PUBLIC:
            return
        principal = await self._principal(req)
        if need == ADMIN and principal.role != ADMIN:
            raise falcon.HTTPForbidden(title="Forbidden", description="this route is for admins",
                                       code="FORBIDDEN")
        req.context.principal = principal

    def forget(self) -> None:
        """Forget every remembered key (a key was revoked); any thread may call it."""
        with self._lock:
            self._cache.clear()
            self._forgotten += 1

    async def _principal(self, req: falcon.asgi.Request) -> Principal:
        scheme, _, key = (req.get_header("Authorization") or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _unauthenticated("send Authorization: Bearer <api key>")
        principal = await self._lookup(key)
        if principal is None:
            raise _unauthenticated("unknown or revoked API key")
        return principal

    async def _lookup(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode()).digest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(digest)
                return cached[1]
            stale = cached[1] if cached is not None and now - cached[0] < self._stale_ttl else None
        fetch = self._fetches.get(digest)  # one lookup per key at a time: a stalled database holds one thread
        if fetch is None:
            fetch = self._fetches[digest] = asyncio.ensure_future(self._fetch(digest, key))
            fetch.add_done_callback(lambda _: self._fetches.pop(digest, None))
        if stale is None:
            return await asyncio.shield(fetch)
        try:  # a key known before: its last answer serves while the database cannot give one
            return await asyncio.wait_for(asyncio.shield(fetch), self._stale_grace)
        except (TimeoutError, UnavailableInfrastructure, EngineTimeout):
            return stale

    async def _fetch(self, digest: bytes, key: str) -> Principal | None:
        """Look the key up in the database and remember the answer."""
        with self._lock:
            forgotten = self._forgotten
        try:
            principal = await blocking(self._authenticate, key)  # the database, on a thread
        except NoAnswerInTime as exc:  # nothing was done yet: unavailable, whatever the request's method
            raise UnavailableInfrastructure(f"checking an API key: {exc}") from None
        ttl = self._cache_ttl if principal is not None else self._miss_ttl
        with self._lock:
            if forgotten != self._forgotten:  # a key was revoked meanwhile: what was read may be stale
                return principal
            self._cache[digest] = (self._clock() + ttl, principal)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal


def key_forgetter(req: falcon.asgi.Request) -> Callable[[], None]:
    """What makes the middleware forget every key it remembered: a route that revokes a key calls it
    once the revocation is committed, on the thread that made it (the key must authenticate nobody from
    then on)."""
    forget: Callable[[], None] = req.context.forget_keys
    return forget


def _unauthenticated(description: str) -> falcon.HTTPUnauthorized:
    return falcon.HTTPUnauthorized(title="Unauthenticated", description=description,
                                   challenges=["Bearer"], code="UNAUTHENTICATED")
