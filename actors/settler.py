"""WalletSettler: delivers the committed wallet commands to the wallet service, then reconciles it.

A supervised actor (child "settler" of the system's supervisor, one-for-one, in no group: it holds no
state the database does not have), built like the outbox relay (`actors.relay`). Each pass:

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
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import pykka

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

from .supervised import ChildLink, SupervisedActor
from .supervision import Backoff

if TYPE_CHECKING:
    from types import TracebackType

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
        self._down: dict[str, float] = {}
        self._outages = 0

    def count(self, **amounts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def failed(self, part: str) -> bool:
        """Note that `part` failed; True when this begins an outage (the one time to log it)."""
        with self._lock:
            if part in self._down:
                return False
            self._down[part] = time.monotonic()
            self._outages += 1
            return True

    def recovered(self, part: str) -> float | None:
        """Note that `part` works; return how long its outage lasted (None if there was none)."""
        with self._lock:
            began = self._down.pop(part, None)
        return None if began is None else time.monotonic() - began

    def figures(self, backlog: WalletBacklog | None = None) -> SettlerFigures:
        """The figures now, with `backlog` attached."""
        with self._lock:
            return SettlerFigures(self.delivered, self.refused, self.reconciliations, self.released,
                                  "wallet service" not in self._down, "database" not in self._down,
                                  self._outages, backlog)


@dataclasses.dataclass(frozen=True, slots=True)
class Nudge:
    """Commands were committed (or a wallet incarnation started): look at the table now."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Poll:
    generation: int


class _Failed(Exception):
    """A pass failed on `part` ("wallet service" or "database")."""

    def __init__(self, part: str, error: BaseException) -> None:
        super().__init__(f"{part}: {error}")
        self.part = part
        self.error = error


class WalletSettler(SupervisedActor):
    """The settler's actor (see the module docstring)."""

    def __init__(self, link: ChildLink, *, pool: Any, client: WalletClient, slot: LedgerSlot,
                 settings: SettlerSettings | None = None, stats: SettlerStats | None = None) -> None:
        super().__init__(link)
        self._pool = pool
        self._client = client
        self._slot = slot
        self.settings = settings or SettlerSettings()
        self.stats = stats if stats is not None else SettlerStats()
        self._generation = 0
        self._queued = False
        self._timer: threading.Timer | None = None
        self._failures = 0
        self._passes = itertools.count(1)

    # -- lifecycle ----------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Look at the table at once: commands left by an earlier run go first."""
        self._wake_now()

    def on_stop(self) -> None:
        """Stop the timer, report the exit."""
        try:
            self._cancel_timer()
        finally:
            super().on_stop()

    def on_failure(self, exception_type: type[BaseException] | None, exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        """A bug: stop the timer, report the crash (the supervisor restarts us; we resume from the table)."""
        try:
            _log.error("wallet settler %s crashed; it resumes from the table", self.link,
                       exc_info=exception_value)
            self._cancel_timer()
        finally:
            super().on_failure(exception_type, exception_value, traceback)

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        if isinstance(message, _Poll):
            if message.generation == self._generation:
                self._queued = False
                self._timer = None
                self._pass()
        elif isinstance(message, Nudge):
            if self._failures == 0:
                self._wake_now()
        else:
            return super().on_receive(message)
        return None

    # -- one pass -----------------------------------------------------------------------------------

    def _pass(self) -> None:
        try:
            more = self._deliver_batch()
            if not more:
                self._reconcile_if_needed()
        except _Failed as failure:
            self._failed(failure.part, failure.error)
            return
        self._failures = 0
        if more:
            self._wake_now()
        else:
            self._wake_in(self.settings.idle_interval)

    def _deliver_batch(self) -> bool:
        """Deliver the next commands; return True when more may wait."""
        settings = self.settings
        try:
            commands = fetch_pending(self._pool, settings.batch_rows, timeout=settings.database_timeout)
        except StorageError as exc:
            raise _Failed("database", exc) from exc
        self._recovered("database")
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
                self._recovered("wallet service")
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
        self._recovered("wallet service")
        return True

    # -- outcomes and scheduling (as the outbox relay) ----------------------------------------------

    def _failed(self, part: str, error: BaseException) -> None:
        self._failures += 1
        delay = self.settings.backoff.delay(self._failures)
        delay = delay / 2 + random.uniform(0, delay / 2)
        if self.stats.failed(part):
            _log.warning("wallet settler: the %s is unavailable (%s); wallet commands wait in the table, "
                         "retrying with backoff (at most every %g s)", part, error, self.settings.backoff.cap)
        else:
            _log.debug("wallet settler: the %s is still unavailable (%s); next try in %.2f s", part, error,
                       delay)
        self._wake_in(delay)

    def _recovered(self, part: str) -> None:
        lasted = self.stats.recovered(part)
        if lasted is not None:
            _log.warning("wallet settler: the %s is available again after %.1f s; delivering the backlog",
                         part, lasted)

    def _wake_now(self) -> None:
        if self._queued:
            return
        self._cancel_timer()
        self._generation += 1
        self._queued = True
        self.actor_ref.tell(_Poll(self._generation))

    def _wake_in(self, delay: float) -> None:
        self._cancel_timer()
        self._generation += 1
        self._queued = False
        timer = threading.Timer(delay, self._fire, (self.actor_ref, self._generation))
        timer.daemon = True
        timer.name = f"wallet-settler-timer-{self.link.incarnation}"
        self._timer = timer
        timer.start()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    @staticmethod
    def _fire(ref: pykka.ActorRef[Any], generation: int) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(_Poll(generation))
