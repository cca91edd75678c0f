"""PairActor: one trading pair's matching core in its own thread, a thin shell around the engine.

A command arrives with a reply future. The actor runs it through the pair's `MatchingEngine` (the
wallet's ledger is the engine's funds gate), applies the resulting movements to the ledger, and hands
the facts to the persistence writer with the reply: the writer resolves the reply only after the commit
that holds them. The actor does not wait for the writer, so it keeps matching while earlier commands
are being written (pipelining). A rule violation fails the reply at once and changes nothing.

Failure handling (see ARCHITECTURE.md, Supervisor):
- the funds gate answering EngineUnavailable before the command changed anything (the remote wallet
  service down, its breaker open, not reconciled yet) fails that command alone (503) and gives back the
  locks it was granted: the pair lives on;
- an unexpected exception inside the engine gives back the locks the command was granted (they never
  reached the writer) and crashes this actor: the supervisor restarts it alone, and the new incarnation
  waits for the writer to commit everything the old one sent before it rebuilds from the database;
- a failure after the ledger moved (or the writer gone) means memory and database may differ: the
  actor fails the reply and asks for the whole "database" group to be rebuilt from the database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from tradeengine.engine import (
    AmendOrder,
    CancelOrder,
    Command,
    DomainError,
    EngineEvent,
    MatchingEngine,
    OrderSnapshot,
    PairSpec,
    PlaceOrder,
)
from tradeengine.engine.errors import EngineUnavailable, PairNotTrading
from tradeengine.engine.validation import amend_requeues
from tradeengine.storage.facts import Facts, PairFacts
from tradeengine.storage.recovery import load_pair_state

from .supervised import ChildLink, SupervisedActor
from .wallet import LedgerSlot, LockJournal
from .writer import Barrier, Commit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Execute:
    """Run `command`; `reply` gets a `CommandOutcome` once its facts are committed, or the error."""

    command: Command
    reply: Future[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What a committed command did: its events, and the subject order's state before it (if any)."""

    spec: PairSpec
    events: list[EngineEvent]
    before: OrderSnapshot | None


@dataclasses.dataclass(frozen=True, slots=True)
class SetTrading:
    """Accept new orders (True) or refuse them with PAIR_NOT_TRADING (halted or delisted), and with them
    amends that re-queue (a new price, a larger quantity); cancels and quantity reductions always work."""

    trading: bool


@dataclasses.dataclass(frozen=True, slots=True)
class DepthQuery:
    """Ask for up to `levels` aggregated price levels per side."""

    levels: int


@dataclasses.dataclass(frozen=True, slots=True)
class Depth:
    """Aggregated book levels (price ticks, lots, order count), best first, at `sequence`."""

    sequence: int
    bids: list[tuple[int, int, int]]
    asks: list[tuple[int, int, int]]


@dataclasses.dataclass(frozen=True, slots=True)
class TopQuery:
    """Ask for the best prices, their quantities and the last trade price."""


@dataclasses.dataclass(frozen=True, slots=True)
class Top:
    """Best bid and ask (price ticks, lots) and the last trade price in ticks, at `sequence`."""

    sequence: int
    best_bid: tuple[int, int] | None
    best_ask: tuple[int, int] | None
    last_price: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class StatusQuery:
    """Ask for the pair's trading flag and order counts."""


@dataclasses.dataclass(frozen=True, slots=True)
class PairActorStatus:
    """Whether the pair accepts new orders, and its live order counts."""

    trading: bool
    bids: int
    asks: int
    stops: int
    sequence: int


class PairActor(SupervisedActor):
    """One trading pair: owns its book and stop book and assigns the pair's sequence."""

    def __init__(
        self,
        link: ChildLink,
        *,
        spec: PairSpec,
        trading: bool,
        pool: Any,
        writer: Any,
        ledger: LedgerSlot,
        barrier_timeout: float = 30.0,
        load_state: Callable[[Any, PairSpec], Any] = load_pair_state,
        facts: Callable[[PairSpec, list[EngineEvent]], Facts] = PairFacts,
    ) -> None:
        """`facts` wraps each command's events for the writer (`WalletSettledFacts` with a remote wallet)."""
        super().__init__(link)
        self._facts = facts
        self.spec = spec
        self.trading = trading
        self._pool = pool
        self._writer = writer
        self._journal = LockJournal(ledger)
        self._ledger = ledger
        self._barrier_timeout = barrier_timeout
        self._load_state = load_state
        self.engine: MatchingEngine

    def on_start(self) -> None:
        """Wait until the writer has committed what earlier incarnations sent, then rebuild the book."""
        barrier: Future[None] = Future()
        self._writer.tell(Barrier(barrier))
        barrier.result(timeout=self._barrier_timeout)
        snapshots, sequence, last_price = self._load_state(self._pool, self.spec)
        self.engine = MatchingEngine(self.spec, self._journal, sequence=sequence, last_price=last_price)
        self.engine.restore(snapshots, sequence=sequence, last_price=last_price)
        log.info("pair %s #%d rebuilt: %d live orders, sequence %d", self.spec.symbol,
                 self.link.incarnation, len(snapshots), sequence)

    def refuse_queued(self, message: Any) -> bool:
        """Fail a queued command: it was never handled and moved nothing, so UNAVAILABLE is exact."""
        if isinstance(message, Execute):
            _refuse(message.reply, self.spec.symbol)
            return True
        return False

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        if isinstance(message, Execute):
            self._execute(message.command, message.reply)
            return None
        if isinstance(message, DepthQuery):
            bids, asks = self.engine.depth(message.levels)
            return Depth(self.engine.sequence, bids, asks)
        if isinstance(message, TopQuery):
            return self._top()
        if isinstance(message, SetTrading):
            self.trading = message.trading
            return None
        if isinstance(message, StatusQuery):
            bid_count, ask_count, stop_count = self.engine.counts()
            return PairActorStatus(self.trading, bid_count, ask_count, stop_count, self.engine.sequence)
        return super().on_receive(message)

    def _execute(self, command: Command, reply: Future[Any]) -> None:
        if not self.trading and isinstance(command, PlaceOrder):
            reply.set_exception(PairNotTrading(
                f"{self.spec.symbol} is not trading: it takes no new orders (cancels still work)"))
            return
        before = None
        if isinstance(command, CancelOrder | AmendOrder):
            before = self.engine.get_order(command.order_id)
        if not self.trading and isinstance(command, AmendOrder) and before is not None and amend_requeues(
            command, before.price, before.quantity
        ):
            reply.set_exception(PairNotTrading(
                f"{self.spec.symbol} is not trading: an amend may only reduce the quantity (a new price or "
                "a larger quantity would re-queue the order, and it could trade)"))
            return
        self._journal.begin()
        sequence = self.engine.sequence
        try:
            events = self.engine.execute(command)
        except DomainError as exc:
            self._journal.rollback()
            reply.set_exception(exc)
            return
        except EngineUnavailable as exc:
            if self.engine.sequence != sequence:  # the book moved: rebuild it (below)
                self._journal.rollback()
                reply.set_exception(EngineUnavailable(f"{self.spec.symbol} failed; restarting"))
                raise
            self._journal.rollback()  # the gate refused before any change: this command alone fails
            reply.set_exception(exc)
            return
        except BaseException as exc:
            self._journal.rollback()
            reply.set_exception(EngineUnavailable(f"{self.spec.symbol} failed; restarting"))
            raise exc
        self._commit(events, before, reply)

    def _commit(self, events: list[EngineEvent], before: OrderSnapshot | None, reply: Future[Any]) -> None:
        commit = Commit(self._facts(self.spec, events), reply, CommandOutcome(self.spec, events, before))
        try:
            # The hand-off runs under the ledger's lock, so the writer receives movements in the
            # order the ledger applied them.
            self._ledger.current().apply(self.spec, events, then=lambda: self._writer.tell(commit))
        except BaseException as exc:
            # The ledger or the book moved but the facts will not be committed: memory and database
            # differ, so every actor whose state depends on the database is rebuilt from it.
            if not reply.done():
                reply.set_exception(EngineUnavailable(f"{self.spec.symbol}: commit impossible; rebuilding"))
            log.exception("pair %s: facts could not be handed to the writer", self.spec.symbol)
            self.report_broken(exc, scope="group")

    def _top(self) -> Top:
        bids, asks = self.engine.depth(1)
        best_bid = (bids[0][0], bids[0][1]) if bids else None
        best_ask = (asks[0][0], asks[0][1]) if asks else None
        return Top(self.engine.sequence, best_bid, best_ask, self.engine.last_price)


def _refuse(reply: Future[Any], symbol: str) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled by its caller
        reply.set_exception(EngineUnavailable(f"{symbol} stopped before handling the command; retry"))
