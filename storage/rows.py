"""Turn a group of facts (`PairFacts`, `Transfer`) into the rows one commit writes. Pure: no I/O.

`build_rows(facts)` returns a `RowSet`:
- `orders`: one INSERT row per order created in the group (OrderAccepted / OrderRejected), with every
  later change in the same group folded in, so a new order is written once, in its final state;
- `order_updates`: one row per older order the group changed, final state only; a field that no event of
  the group set is None ("leave as is");
- `client_order_ids`, `trades`;
- `ledger_entries`: one per movement of one (user, asset): FundsLocked → RESERVE, FundsReleased →
  RELEASE, TradeExecuted → per side TRADE_DEBIT (what it pays, from locked), TRADE_CREDIT (what it
  receives, gross), FEE (what it pays on that) and FEE_INCOME for the fee account; Transfer → DEPOSIT /
  WITHDRAWAL. Zero amounts (a fee-free side) are left out;
- `balance_deltas`: the ledger entries summed per (user, asset), zero sums left out, sorted (a stable
  lock order). Built from the ledger rows, so ledger and balances agree by construction;
- `outbox`: one `OutboxMessage` per pair of the group (and one for all its transfers), holding that
  pair's events in fact order (so in sequence order): per order change an `order.<SYMBOL>.<STATUS>`
  event, per trade a `trade.<SYMBOL>` event, and per command (or transfer) and (user, asset) whose
  balance moved a `balance.<ASSET>` event with the deltas (`RowSet.outbox_events` lists them all);
- `pairs`: per symbol the last sequence of the group and the last trade price (None: no trade);
- `wallet_commands`: only for `WalletSettledFacts` (remote wallet mode): per trade a ``settle``, per
  release a ``release`` (`storage.wallet_commands`); such a group has NO `ledger_entries` and NO
  `balance_deltas` (the balances live at the wallet service; the outbox still carries each command's
  `balance.changed` deltas). A group never mixes both kinds of facts (ValueError): one engine runs one
  wallet mode.

Invariants (tested): per asset, the balance deltas of engine facts sum to zero (money moves, it is never
created); Transfers change the total by exactly their amounts; the same facts give the same rows, byte
for byte, including every `event_id` (uuid5 of symbol, sequence and kind; see `event_id`).

Event types: order.accepted|rejected|traded|cancelled|expired|triggered|amended, trade.executed,
balance.changed. A `Transfer`'s events derive their ids from its `transfer_id`.

Id mapping follows `storage.facts`: order id = int(core order id), created_at = the instant in the id,
users through `database_user_id`, trade id text "SYMBOL:SEQ", timestamps µs since the Unix epoch.
Complexity: O(events) time and memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Context, Decimal
from typing import Any, NamedTuple

import msgspec

from tradeengine.engine import (
    EngineEvent,
    FundsLocked,
    FundsReleased,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    PairSpec,
    StopTriggered,
    TradeExecuted,
    from_atoms,
)
from tradeengine.storage.facts import FEE_ACCOUNT_USER_ID, Facts, PairFacts, Transfer, database_user_id
from tradeengine.storage.ids import created_at_of, datetime_of_us
from tradeengine.storage.wallet_commands import WalletCommandRow, WalletSettledFacts, wallet_commands_of

EVENT_NAMESPACE = uuid.UUID("5b0f6d0e-8c1e-5f0a-9a3c-7e2d4b1c6a90")
"""Namespace of the outbox event ids (uuid5)."""

_ZERO = Decimal(0)
_WIDE = Context(prec=100)  # normalize() rounds to the context precision: keep every digit


class OrderRow(NamedTuple):
    """A new ``orders`` row, in ``ORDER_COLUMNS`` order."""

    id: int
    user_id: int
    symbol: str
    side: str
    type: str
    status: str
    price: Decimal | None
    stop_price: Decimal | None
    quantity: Decimal | None
    quote_quantity: Decimal | None
    filled_quantity: Decimal
    filled_quote: Decimal
    time_in_force: str
    post_only: bool
    self_trade_prevention: str
    reject_reason: str | None
    client_order_id: str | None
    sequence: int
    priority: int
    updated_sequence: int
    created_at: datetime
    updated_at: datetime


class OrderUpdate(NamedTuple):
    """The final state of an existing order after the group; None means unchanged."""

    id: int
    created_at: datetime
    status: str
    filled_quantity: Decimal | None
    filled_quote: Decimal | None
    price: Decimal | None
    quantity: Decimal | None
    priority: int | None
    reject_reason: str | None
    updated_sequence: int
    updated_at: datetime


class ClientOrderIdRow(NamedTuple):
    """A ``client_order_ids`` row."""

    user_id: int
    client_order_id: str
    order_id: int
    created_at: datetime


class TradeRow(NamedTuple):
    """A ``trades`` row, in ``TRADE_COLUMNS`` order."""

    id: str
    symbol: str
    price: Decimal
    quantity: Decimal
    quote_quantity: Decimal
    buyer_order_id: int
    seller_order_id: int
    buyer_user_id: int
    seller_user_id: int
    taker_side: str
    buyer_fee: Decimal
    seller_fee: Decimal
    executed_at: datetime
    sequence: int


class LedgerRow(NamedTuple):
    """A ``ledger_entries`` row, in ``LEDGER_COLUMNS`` order; amounts in asset units."""

    user_id: int
    asset: str
    kind: str
    amount: Decimal
    available_delta: Decimal
    locked_delta: Decimal
    order_id: int | None
    trade_id: str | None
    created_at: datetime


class BalanceDelta(NamedTuple):
    """What the group adds to one (user, asset) balance."""

    user_id: int
    asset: str
    available: Decimal
    locked: Decimal


class OutboxEvent(msgspec.Struct, frozen=True):
    """One event of an outbox message; JSON-encoded as an object with these fields, in this order.

    ``sequence`` is the pair sequence (None for a transfer); ``payload`` is JSON-ready (decimals and
    timestamps as strings).
    """

    event_id: uuid.UUID
    event_type: str
    routing_key: str
    sequence: int | None
    payload: dict[str, Any]


class OutboxMessage(NamedTuple):
    """An ``outbox_messages`` row: the events of one pair (symbol None: of the transfers) in one group."""

    symbol: str | None
    first_sequence: int | None
    last_sequence: int | None
    events: list[OutboxEvent]


class PairProgress(NamedTuple):
    """How far the group takes a pair: its last sequence and last trade price (None: no trade)."""

    symbol: str
    last_sequence: int
    last_price: Decimal | None


ORDER_COLUMNS = OrderRow._fields
TRADE_COLUMNS = TradeRow._fields
LEDGER_COLUMNS = LedgerRow._fields


@dataclasses.dataclass(slots=True)
class RowSet:
    """Everything one commit writes."""

    orders: list[OrderRow] = dataclasses.field(default_factory=list)
    order_updates: list[OrderUpdate] = dataclasses.field(default_factory=list)
    client_order_ids: list[ClientOrderIdRow] = dataclasses.field(default_factory=list)
    trades: list[TradeRow] = dataclasses.field(default_factory=list)
    ledger_entries: list[LedgerRow] = dataclasses.field(default_factory=list)
    balance_deltas: list[BalanceDelta] = dataclasses.field(default_factory=list)
    outbox: list[OutboxMessage] = dataclasses.field(default_factory=list)
    pairs: list[PairProgress] = dataclasses.field(default_factory=list)
    wallet_commands: list[WalletCommandRow] = dataclasses.field(default_factory=list)
    facts: int = 0

    @property
    def row_count(self) -> int:
        """The number of rows the commit writes."""
        return (len(self.orders) + len(self.order_updates) + len(self.client_order_ids) + len(self.trades)
                + len(self.ledger_entries) + len(self.balance_deltas) + len(self.outbox) + len(self.pairs)
                + len(self.wallet_commands))

    @property
    def outbox_events(self) -> list[OutboxEvent]:
        """Every outbox event of the group, message after message."""
        return [event for message in self.outbox for event in message.events]


def event_id(symbol: str, sequence: int, kind: str) -> uuid.UUID:
    """Return the stable outbox event id of `kind` for the pair event (symbol, sequence)."""
    return _uuid5(f"{symbol}:{sequence}:{kind}")


_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


def _uuid5(name: str) -> uuid.UUID:
    """Return uuid.uuid5(EVENT_NAMESPACE, name), in about half the time (the writer makes many)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return uuid.UUID(bytes=bytes(digest))


def rfc3339(moment: datetime) -> str:
    """Render a UTC datetime as RFC 3339 with microseconds ("2026-11-24T10:00:00.123456Z")."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_rows(facts: Iterable[Facts]) -> RowSet:
    """Return the rows that commit `facts` (in the order given)."""
    builder = _RowBuilder()
    for fact in facts:
        if isinstance(fact, PairFacts):
            builder.add_pair_facts(fact)
            if type(fact) is WalletSettledFacts:
                builder.rows.wallet_commands += wallet_commands_of(fact.spec, fact.events)
                builder.settled_at_wallet += 1
        else:
            builder.add_transfer(fact)
    return builder.finish()


@dataclasses.dataclass(slots=True)
class _OrderState:
    """An order's row as the group leaves it; for an existing order only what the group set."""

    new: bool
    row: dict[str, Any]


# A ledger movement before conversion: (user, asset, kind, atoms, available Δ atoms, locked Δ atoms,
# order id, trade id, timestamp µs).
_Movement = tuple[int, str, str, int, int, int, int | None, str | None, int]


class _RowBuilder:
    """Accumulates the rows of one group, fact by fact."""

    def __init__(self) -> None:
        self.rows = RowSet()
        self.orders: dict[str, _OrderState] = {}
        self.movements: list[_Movement] = []
        self.progress: dict[str, PairProgress] = {}
        self.events: dict[str | None, list[OutboxEvent]] = {}  # per symbol (None: transfers), in order
        self._times: dict[int, datetime] = {}
        self._stamps: dict[int, str] = {}
        self.spec: PairSpec
        self._events: list[OutboxEvent] = []  # the list of the fact being added (in `events`)
        self.settled_at_wallet = 0  # WalletSettledFacts added (remote wallet mode)

    # -- entry points -------------------------------------------------------------------------------

    def add_pair_facts(self, facts: PairFacts) -> None:
        """Add the events of one command."""
        self.rows.facts += 1
        if not facts.events:
            return
        self.spec = spec = facts.spec
        self._events = self.events.setdefault(spec.symbol, [])
        first_movement = len(self.movements)
        last_price = None
        for event in facts.events:
            handler = _HANDLERS[type(event)]
            handler(self, event)
            if type(event) is TradeExecuted:
                last_price = spec.ticks_to_price(event.price)
        last = facts.events[-1]
        previous = self.progress.get(spec.symbol)
        if last_price is None and previous is not None:
            last_price = previous.last_price
        self.progress[spec.symbol] = PairProgress(spec.symbol, last.sequence, last_price)
        kind_prefix = f"{spec.symbol}:{last.sequence}"
        self._balance_events(first_movement, spec.symbol, last.sequence, kind_prefix, last.timestamp)

    def add_transfer(self, transfer: Transfer) -> None:
        """Add a deposit or withdrawal."""
        self.rows.facts += 1
        if transfer.amount <= 0:
            raise ValueError(f"a transfer moves a positive amount, got {transfer.amount}")
        sign = 1 if transfer.kind == "DEPOSIT" else -1
        self._events = self.events.setdefault(None, [])
        first_movement = len(self.movements)
        self.movements.append((
            transfer.user_id, transfer.asset, transfer.kind, transfer.amount, sign * transfer.amount, 0,
            None, None, transfer.timestamp,
        ))
        # Transfers carry no sequence: their event ids come from their own id.
        key = f"transfer:{transfer.transfer_id}"
        self._balance_events(first_movement, None, None, key, transfer.timestamp)

    def finish(self) -> RowSet:
        """Return the rows of everything added."""
        rows = self.rows
        for order_id, state in self.orders.items():
            if state.new:
                rows.orders.append(OrderRow(**state.row))
            else:
                rows.order_updates.append(_order_update(int(order_id), state.row))
        if self.settled_at_wallet:  # remote wallet: the balances live at the service
            if self.settled_at_wallet != rows.facts:
                raise ValueError("a group mixes facts settled at the wallet service with local ones")
        else:
            rows.ledger_entries = [_ledger_row(m, self._time(m[8])) for m in self.movements]
            rows.balance_deltas = _balance_deltas(self.movements)
        rows.outbox = [
            OutboxMessage(symbol, events[0].sequence, events[-1].sequence, events)
            for symbol, events in self.events.items()
            if events
        ]
        rows.pairs = sorted(self.progress.values())
        return rows

    # -- orders -------------------------------------------------------------------------------------

    def _new_order(self, event: OrderAccepted | OrderRejected) -> None:
        spec = self.spec
        order_id = int(event.order_id)
        created_at = created_at_of(order_id)
        user_id = database_user_id(event.user_id)
        ticks = spec.ticks_to_price
        price = None if event.price is None else ticks(event.price)
        stop_price = None if event.stop_price is None else ticks(event.stop_price)
        quantity = None if event.quantity is None else spec.lots_to_quantity(event.quantity)
        quote_quantity = None if event.quote_quantity is None else from_atoms(event.quote_quantity)
        reason = event.reason.value if type(event) is OrderRejected else None
        side, order_type, tif = event.side.value, event.order_type.value, event.time_in_force.value
        stp = event.self_trade_prevention.value
        self.orders[event.order_id] = _OrderState(True, {
            "id": order_id, "user_id": user_id, "symbol": spec.symbol, "side": side, "type": order_type,
            "status": event.status.value, "price": price, "stop_price": stop_price, "quantity": quantity,
            "quote_quantity": quote_quantity, "filled_quantity": _ZERO, "filled_quote": _ZERO,
            "time_in_force": tif, "post_only": event.post_only, "self_trade_prevention": stp,
            "reject_reason": reason, "client_order_id": event.client_order_id, "sequence": event.sequence,
            "priority": event.sequence, "updated_sequence": event.sequence,
            "created_at": created_at, "updated_at": self._time(event.timestamp),
        })
        if event.client_order_id is not None:
            self.rows.client_order_ids.append(
                ClientOrderIdRow(user_id, event.client_order_id, order_id, created_at)
            )
        self._order_event(event, event.order_id, event.user_id, event.status.value, {
            "client_order_id": event.client_order_id, "side": side, "type": order_type,
            "price": _optional_text(price), "stop_price": _optional_text(stop_price),
            "quantity": _optional_text(quantity), "quote_quantity": _optional_text(quote_quantity),
            "time_in_force": tif, "post_only": event.post_only, "self_trade_prevention": stp,
            "reject_reason": reason,
        })

    def _change_order(self, order_id: str, sequence: int, timestamp: int, **changes: Any) -> None:
        """Fold `changes` (column → value) into the order's row."""
        state = self.orders.get(order_id)
        if state is None:
            state = self.orders[order_id] = _OrderState(False, {})
        row = state.row
        row.update(changes)
        row["updated_sequence"] = sequence
        row["updated_at"] = self._time(timestamp)

    def _fill_columns(self, filled: int, cumulative_quote: int) -> dict[str, Any]:
        return {
            "filled_quantity": self.spec.lots_to_quantity(filled),
            "filled_quote": from_atoms(cumulative_quote),
        }

    def _on_cancelled(self, event: OrderCancelled | OrderExpired) -> None:
        status = "CANCELLED" if type(event) is OrderCancelled else "EXPIRED"
        columns = self._fill_columns(event.filled_quantity, event.cumulative_quote)
        extra: dict[str, Any] = {}
        if type(event) is OrderExpired:
            columns["reject_reason"] = extra["reject_reason"] = event.reason.value
        self._change_order(event.order_id, event.sequence, event.timestamp, status=status, **columns)
        self._order_event(event, event.order_id, event.user_id, status, {
            **self._fill_payload(event.filled_quantity, event.cumulative_quote),
            "remaining_quantity": self._quantity(event.remaining_quantity), **extra,
        })

    def _on_triggered(self, event: StopTriggered) -> None:
        self._change_order(event.order_id, event.sequence, event.timestamp, status="OPEN",
                           priority=event.sequence)
        self._order_event(event, event.order_id, event.user_id, "OPEN", {
            "stop_price": self._price(event.stop_price), "last_price": self._price(event.last_price),
        })

    def _on_amended(self, event: OrderAmended) -> None:
        spec = self.spec
        self._change_order(
            event.order_id, event.sequence, event.timestamp, status=event.status.value,
            price=spec.ticks_to_price(event.price), quantity=spec.lots_to_quantity(event.quantity),
            priority=event.priority,
        )
        self._order_event(event, event.order_id, event.user_id, event.status.value, {
            "price": self._price(event.price), "quantity": self._quantity(event.quantity),
            "remaining_quantity": self._quantity(event.remaining_quantity),
            "requeued": event.requeued,
        })

    # -- trades and money ---------------------------------------------------------------------------

    def _on_trade(self, event: TradeExecuted) -> None:
        spec = self.spec
        symbol = spec.symbol
        trade_id = event.trade_id(symbol)
        buyer, seller = database_user_id(event.buyer_user_id), database_user_id(event.seller_user_id)
        buyer_order, seller_order = int(event.buyer_order_id), int(event.seller_order_id)
        executed_at = self._time(event.timestamp)
        row = TradeRow(
            trade_id, symbol, spec.ticks_to_price(event.price), spec.lots_to_quantity(event.quantity),
            from_atoms(event.quote_amount), buyer_order, seller_order, buyer, seller, event.taker_side.value,
            from_atoms(event.buyer_fee), from_atoms(event.seller_fee), executed_at, event.sequence,
        )
        self.rows.trades.append(row)
        for order_id, user_id, status, filled, quote in (
            (event.buyer_order_id, event.buyer_user_id, event.buyer_status, event.buyer_filled,
             event.buyer_cumulative_quote),
            (event.seller_order_id, event.seller_user_id, event.seller_status, event.seller_filled,
             event.seller_cumulative_quote),
        ):
            self._change_order(order_id, event.sequence, event.timestamp, status=status.value,
                               **self._fill_columns(filled, quote))
            self._order_event(event, order_id, user_id, status.value, {
                "trade_id": trade_id, **self._fill_payload(filled, quote),
            })
        self._settle(event, trade_id, buyer, seller, buyer_order, seller_order)
        self._events.append(OutboxEvent(
            event_id(symbol, event.sequence, "trade"), "trade.executed", f"trade.{symbol}", event.sequence,
            _trade_payload(row),
        ))

    def _settle(self, event: TradeExecuted, trade_id: str, buyer: int, seller: int, buyer_order: int,
                seller_order: int) -> None:
        """Record the settlement's movements (see engine.events.TradeExecuted for the deltas)."""
        base, quote = self.spec.base_asset, self.spec.quote_asset
        base_amount, quote_amount = event.base_amount, event.quote_amount
        buyer_fee, seller_fee = event.buyer_fee, event.seller_fee
        ts = event.timestamp
        add = self.movements.append
        add((buyer, quote, "TRADE_DEBIT", quote_amount, 0, -quote_amount, buyer_order, trade_id, ts))
        add((buyer, base, "TRADE_CREDIT", base_amount, base_amount, 0, buyer_order, trade_id, ts))
        if buyer_fee:
            add((buyer, base, "FEE", buyer_fee, -buyer_fee, 0, buyer_order, trade_id, ts))
            add((FEE_ACCOUNT_USER_ID, base, "FEE_INCOME", buyer_fee, buyer_fee, 0, buyer_order, trade_id, ts))
        add((seller, base, "TRADE_DEBIT", base_amount, 0, -base_amount, seller_order, trade_id, ts))
        add((seller, quote, "TRADE_CREDIT", quote_amount, quote_amount, 0, seller_order, trade_id, ts))
        if seller_fee:
            add((seller, quote, "FEE", seller_fee, -seller_fee, 0, seller_order, trade_id, ts))
            add((FEE_ACCOUNT_USER_ID, quote, "FEE_INCOME", seller_fee, seller_fee, 0, seller_order, trade_id,
                 ts))

    def _on_locked(self, event: FundsLocked) -> None:
        amount = event.amount
        self.movements.append((
            database_user_id(event.user_id), event.asset, "RESERVE", amount, -amount, amount,
            int(event.order_id), None, event.timestamp,
        ))

    def _on_released(self, event: FundsReleased) -> None:
        amount = event.amount
        self.movements.append((
            database_user_id(event.user_id), event.asset, "RELEASE", amount, amount, -amount,
            int(event.order_id), None, event.timestamp,
        ))

    # -- outbox ------------------------------------------------------------------------------------

    def _order_event(self, event: EngineEvent, order_id: str, user_id: str, status: str,
                     details: dict[str, Any]) -> None:
        symbol = self.spec.symbol
        kind = _ORDER_EVENT_TYPES[type(event)]
        payload = {
            "order_id": order_id, "user_id": str(database_user_id(user_id)), "symbol": symbol,
            "status": status, "sequence": event.sequence, "timestamp": self._stamp(event.timestamp),
            **details,
        }
        self._events.append(OutboxEvent(
            event_id(symbol, event.sequence, f"order:{order_id}"), kind, f"order.{symbol}.{status}",
            event.sequence, payload,
        ))

    def _balance_events(self, first: int, symbol: str | None, sequence: int | None, kind_prefix: str,
                        timestamp: int) -> None:
        """Add one balance event per (user, asset) the movements since `first` changed."""
        for delta in _balance_deltas(self.movements[first:]):
            kind = f"{kind_prefix}:balance:{delta.user_id}:{delta.asset}"
            self._events.append(OutboxEvent(
                _uuid5(kind), "balance.changed", f"balance.{delta.asset}", sequence, {
                    "user_id": str(delta.user_id), "asset": delta.asset,
                    "available_delta": _text(delta.available),
                    "locked_delta": _text(delta.locked), "symbol": symbol, "sequence": sequence,
                    "timestamp": self._stamp(timestamp),
                },
            ))

    def _fill_payload(self, filled: int, cumulative_quote: int) -> dict[str, Any]:
        average = self.spec.average_price(filled, cumulative_quote)
        return {
            "filled_quantity": self._quantity(filled),
            "filled_quote": _text(from_atoms(cumulative_quote)),
            "average_price": None if average is None else _text(average),
        }

    def _price(self, ticks: int | None) -> str | None:
        return None if ticks is None else _text(self.spec.ticks_to_price(ticks))

    def _quantity(self, lots: int) -> str:
        return _text(self.spec.lots_to_quantity(lots))

    def _stamp(self, timestamp_us: int) -> str:
        text = self._stamps.get(timestamp_us)
        if text is None:
            text = self._stamps[timestamp_us] = rfc3339(self._time(timestamp_us))
        return text

    def _time(self, timestamp_us: int) -> datetime:
        moment = self._times.get(timestamp_us)
        if moment is None:
            moment = self._times[timestamp_us] = datetime_of_us(timestamp_us)
        return moment


_HANDLERS: dict[type, Any] = {
    OrderAccepted: _RowBuilder._new_order,
    OrderRejected: _RowBuilder._new_order,
    FundsLocked: _RowBuilder._on_locked,
    FundsReleased: _RowBuilder._on_released,
    TradeExecuted: _RowBuilder._on_trade,
    OrderCancelled: _RowBuilder._on_cancelled,
    OrderExpired: _RowBuilder._on_cancelled,
    StopTriggered: _RowBuilder._on_triggered,
    OrderAmended: _RowBuilder._on_amended,
}

_ORDER_EVENT_TYPES: dict[type, str] = {
    OrderAccepted: "order.accepted",
    OrderRejected: "order.rejected",
    TradeExecuted: "order.traded",
    OrderCancelled: "order.cancelled",
    OrderExpired: "order.expired",
    StopTriggered: "order.triggered",
    OrderAmended: "order.amended",
}


def _order_update(order_id: int, row: dict[str, Any]) -> OrderUpdate:
    get = row.get
    return OrderUpdate(
        order_id, created_at_of(order_id), row["status"], get("filled_quantity"), get("filled_quote"),
        get("price"), get("quantity"), get("priority"), get("reject_reason"), row["updated_sequence"],
        row["updated_at"],
    )


def _ledger_row(movement: _Movement, created_at: datetime) -> LedgerRow:
    user_id, asset, kind, amount, available, locked, order_id, trade_id, _ = movement
    return LedgerRow(
        user_id, asset, kind, from_atoms(amount), from_atoms(available), from_atoms(locked), order_id,
        trade_id, created_at,
    )


def _balance_deltas(movements: list[_Movement]) -> list[BalanceDelta]:
    """Sum movements per (user, asset); leave out the ones that net to zero; sort by (user, asset)."""
    sums: dict[tuple[int, str], list[int]] = {}
    for user_id, asset, _, _, available, locked, _, _, _ in movements:
        total = sums.get((user_id, asset))
        if total is None:
            sums[(user_id, asset)] = [available, locked]
        else:
            total[0] += available
            total[1] += locked
    return [
        BalanceDelta(user_id, asset, from_atoms(available), from_atoms(locked))
        for (user_id, asset), (available, locked) in sorted(sums.items())
        if available or locked
    ]


def _text(value: Decimal) -> str:
    """Render a Decimal like engine.format_decimal (plain, no trailing zeros), about five times faster."""
    return f"{value.normalize(_WIDE):f}" if value else "0"


def _optional_text(value: Decimal | None) -> str | None:
    return None if value is None else _text(value)


def _trade_payload(row: TradeRow) -> dict[str, Any]:
    return {
        "id": row.id, "symbol": row.symbol, "price": _text(row.price),
        "quantity": _text(row.quantity), "quote_quantity": _text(row.quote_quantity),
        "buyer_order_id": str(row.buyer_order_id), "seller_order_id": str(row.seller_order_id),
        "buyer_user_id": str(row.buyer_user_id), "seller_user_id": str(row.seller_user_id),
        "taker_side": row.taker_side, "buyer_fee": _text(row.buyer_fee),
        "seller_fee": _text(row.seller_fee), "executed_at": rfc3339(row.executed_at),
        "sequence": row.sequence,
    }
