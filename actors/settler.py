"""WalletSettler: delivers the committed wallet commands to the wallet service, then reconciles it.

A supervised actor (child "settler" of the system's supervisor, one-for-one, in no group: it holds no
state the database does not have), a `PollingActor` like the outbox relay (`actors.polling`). Each pass:

1. reads up to ``batch_rows`` undelivered `wallet_commands` in id order (`storage.wallet_commands`);
2. delivers each with its stable idempotency key: ``settle`` → settle, ``release`` → release, ``void``
   → the reserve sent again with its own key, then, if it took effect, released;
3. stamps ``delivered_at`` on the commands the service acknowledged.

Passes follow one another at once while commands wait; when none wait the settler waits for a `Nudge`
(the system sends one after every commit of the writer, and after a direct insert) or
``idle_interval`` seconds. While the service (or the database) fails, what was delivered so far is
stamped, the failing command's attempts and last error are recorded, the outage is logged ONCE and the
next pass comes after an exponential backoff with jitter, nudges ignored meanwhile. Nothing is held in
memory across passes: a restarted settler or engine resumes from the table.

Delivery is at least once and the service applies each key once, so every command takes effect exactly
once. A command the service REFUSES (a 4xx: INSUFFICIENT_LOCKED, NEGATIVE_BALANCE, a reused key — a
bug, never expected) is parked: stamped ``refused_at`` with the answer, logged at ERROR, counted, kept
in the table for the operator (``UPDATE wallet_commands SET refused_at = NULL WHERE id = ...`` queues it
again) and skipped, so one bad command neither vanishes nor blocks every later one.

Reconciliation. When the pending commands are all delivered and the current wallet incarnation is a
`RemoteWallet` not yet reconciled (a wallet start), the settler compares, for every (user, asset), the
service's locked balance with what must be locked: what live orders reserve, plus what undelivered
commands will still take from locked (both read in ONE database snapshot; nothing else moves locked at
the service meanwhile: reserves wait for the reconciliation, and this thread is the only one
delivering). A surplus (a reserve of a command that never committed: a crash, a failed commit) is
released (key ``reconcile:<incarnation>:<pass>:<user>:<asset>``); a deficit is logged at ERROR (it needs
an operator); a (user, asset) touched by a refused command is left alone and logged. Then the backend
lets reserves through. This assumes ONE engine uses the wallet service for these users.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any

from tradeengine.engine import EngineUnavailable
from tradeengine.storage.errors import StorageError
from tradeengine.storage.recovery import load_pair_specs, load_wallet_reservations
from tradeengine.storage.wallet_client import WalletClient, WalletRejected, WalletUnavailable
from tradeengine.storage.wallet_commands import (
    PendingCommand,
    WalletBacklog,
    fetch_pending,
    mark_delivered,
    mark_refused,
    record_failure,
)

from .polling import Nudge, Outages, PollingActor
from .supervised import ChildLink
from .supervision import Backoff

if TYPE_CHECKING:
    from .remote_wallet import RemoteWallet
    from .wallet import LedgerSlot

__all__ = ["Nudge", "SettlerFigures", "SettlerSettings", "SettlerStats", "WalletSettler"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class SettlerSettings:
    """How the settler works the table."""

    batch_rows: int = 100
    idle_interval: float = 1.0
    backoff: Backoff = dataclasses.field(default_factory=lambda: Backoff(initial=0.2, factor=2.0, cap=10.0))
    database_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.batch_rows < 1 or not self.idle_interval > 0:
            raise ValueError("batch_rows must be at least 1 and idle_interval greater than 0")


@dataclasses.dataclass(frozen=True, slots=True)
class SettlerFigures:
    """What the settler has done since the system started."""

    delivered: int
    refused: int
    reconciliations: int
    released_by_reconciliation: int
    service_available: bool
    database_available: bool
    outages: int
    backlog: WalletBacklog | None = None
    """Undelivered and refused commands and the oldest one's age; None when not read (or unreadable)."""


class SettlerStats:
    """Thread-safe counters shared by every incarnation of the settler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.delivered = 0
        self.refused = 0
        self.reconciliations = 0
        self.released = 0
        self.outages = Outages()  # "wallet service" / "database"

    def count(self, **amounts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def figures(self, backlog: WalletBacklog | None = None) -> SettlerFigures:
        """The figures now, with `backlog` attached."""
        outages = self.outages
        with self._lock:
            return SettlerFigures(self.delivered, self.refused, self.reconciliations, self.released,
                                  outages.up("wallet service"), outages.up("database"), outages.count,
                                  backlog)


class _Failed(Exception):
    """A pass failed on `part` ("wallet service" or "database")."""

    def __init__(self, part: str, error: BaseException) -> None:
        super().__init__(f"{part}: {error}")
        self.part = part
        self.error = error


class WalletSettler(PollingActor):
    """The settler's actor (see the module docstring)."""

    what = "wallet settler"
    waiting = "wallet commands wait in the table"

    def __init__(self, link: ChildLink, *, pool: Any, client: WalletClient, slot: LedgerSlot,
                 settings: SettlerSettings | None = None, stats: SettlerStats | None = None) -> None:
        self.settings = settings or SettlerSettings()
        self.stats = stats if stats is not None else SettlerStats()
        super().__init__(link, log=_log, outages=self.stats.outages,
                         idle_interval=self.settings.idle_interval, backoff=self.settings.backoff)
        self._pool = pool
        self._client = client
        self._slot = slot
        self._passes = itertools.count(1)

    # -- one pass -----------------------------------------------------------------------------------

    def pass_once(self) -> bool | None:
        """Deliver the next commands, then reconcile when none wait; None after a failure."""
        try:
            more = self._deliver_batch()
            if not more:
                self._reconcile_if_needed()
        except _Failed as failure:
            self.failed(failure.part, failure.error)
            return None
        return more

    def _deliver_batch(self) -> bool:
        """Deliver the next commands; return True when more may wait."""
        settings = self.settings
        try:
            commands = fetch_pending(self._pool, settings.batch_rows, timeout=settings.database_timeout)
        except StorageError as exc:
            raise _Failed("database", exc) from exc
        self.recovered("database")
        delivered: list[int] = []
        try:
            for command in commands:
                try:
                    self._deliver(command)
                except WalletRejected as exc:
                    self._refuse(command, exc)
                    continue
                except WalletUnavailable as exc:
                    with contextlib.suppress(StorageError):
                        record_failure(self._pool, command.id, str(exc), timeout=settings.database_timeout)
                    raise _Failed("wallet service", exc) from exc
                delivered.append(command.id)
                self.recovered("wallet service")
        finally:
            self._stamp(delivered)
        return len(commands) == settings.batch_rows

    def _deliver(self, command: PendingCommand) -> None:
        client = self._client
        key = command.idempotency_key
        if command.kind == "settle":
            client.settle(key, command.movements)
            return
        if len(command.movements) != 1:  # written by hand? park it rather than crash on every pass
            raise WalletRejected(0, "MALFORMED_COMMAND", f"a {command.kind} moves exactly one balance")
        ((user, asset, available, locked),) = command.movements
        if command.kind == "release":
            client.release(key, user, asset, available)
        elif command.kind == "void":  # complete the reserve of unknown outcome, then undo it
            if client.reserve(key.removeprefix("void:"), user, asset, locked):
                client.release(key, user, asset, locked)
        else:
            raise WalletRejected(0, "UNKNOWN_KIND", f"unknown wallet command kind {command.kind!r}")

    def _stamp(self, ids: list[int]) -> None:
        if not ids:
            return
        try:
            mark_delivered(self._pool, ids, timeout=self.settings.database_timeout)
        except StorageError as exc:  # delivered but not stamped: they go again, same keys (harmless)
            raise _Failed("database", exc) from exc
        self.stats.count(delivered=len(ids))

    def _refuse(self, command: PendingCommand, error: WalletRejected) -> None:
        _log.error("the wallet service refused wallet command %s (%s %s): %s; it is parked in "
                   "wallet_commands (refused_at) for an operator, later commands go on",
                   command.idempotency_key, command.kind, command.movements, error)
        try:
            mark_refused(self._pool, command.id, str(error), timeout=self.settings.database_timeout)
        except StorageError as exc:
            raise _Failed("database", exc) from exc
        self.stats.count(refused=1)

    # -- reconciliation -----------------------------------------------------------------------------

    def _reconcile_if_needed(self) -> None:
        from .remote_wallet import RemoteWallet

        try:
            backend = self._slot.current()
        except EngineUnavailable:
            return
        if not isinstance(backend, RemoteWallet) or backend.reconciled:
            return
        if self._reconcile(backend):
            backend.mark_reconciled()
            self.stats.count(reconciliations=1)
            _log.info("wallet service reconciled (incarnation %s): reserves are accepted", backend.boot)

    def _reconcile(self, backend: RemoteWallet) -> bool:
        """Release locked funds no open order or pending command explains; False: drain first."""
        try:
            snapshot = load_wallet_reservations(self._pool, [spec for spec, _ in load_pair_specs(self._pool)])
        except StorageError as exc:
            raise _Failed("database", exc) from exc
        if snapshot.pending_voids:
            return False
        expected = snapshot.expected_locked()
        try:
            held = {(b.user_id, b.asset): b.locked for b in self._client.all_balances() if b.locked}
            attempt = next(self._passes)
            for user, asset in sorted(held.keys() | expected.keys()):
                locked, needed = held.get((user, asset), 0), expected.get((user, asset), 0)
                if locked == needed:
                    continue
                if (user, asset) in snapshot.refused:
                    _log.error("wallet reconciliation: user %s asset %s locked %d, expected %d atoms, but a "
                               "refused wallet command touches it: left for an operator", user, asset, locked,
                               needed)
                elif locked > needed:
                    key = f"reconcile:{backend.boot}:{attempt}:{user}:{asset}"
                    self._client.release(key, user, asset, locked - needed)
                    self.stats.count(released=1)
                    _log.warning("wallet reconciliation: released %d atoms of %s locked for user %s that no "
                                 "open order reserves (a command that never committed)", locked - needed,
                                 asset, user)
                else:
                    _log.error("wallet reconciliation: user %s asset %s has %d atoms locked at the wallet "
                               "service but open orders reserve %d: a DEFICIT of %d, needs an operator",
                               user, asset, locked, needed, needed - locked)
        except WalletUnavailable as exc:
            raise _Failed("wallet service", exc) from exc
        except WalletRejected as exc:
            _log.error("wallet reconciliation: the service refused a release: %s; trying again", exc)
            raise _Failed("wallet service", exc) from exc
        self.recovered("wallet service")
        return True
