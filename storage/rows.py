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
  lock order). Built from the same movements as the ledger rows, so ledger and balances agree by
  construction;
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

Cost (the persistence writer builds every group on its one thread): per group, each distinct timestamp
becomes one datetime object and one RFC 3339 string, each atom count one Decimal, each user id one
(int, text) pair (memoised); a new order's row is one list updated in place; amounts in payloads are
rendered straight from atoms (`format_atoms`); event ids come from a leaner uuid5 (`_uuid5`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

import msgspec

from tradeengine.engine import (
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
from tradeengine.engine.units import format_atoms, format_decimal
from tradeengine.storage.facts import FEE_ACCOUNT_USER_ID, Facts, PairFacts, Transfer, database_user_id
from tradeengine.storage.ids import datetime_of_us, timestamp_us_of
from tradeengine.storage.wallet_commands import WalletCommandRow, WalletSettledFacts, wallet_commands_of

EVENT_NAMESPACE = uuid.UUID("5b0f6d0e-8c1e-5f0a-9a3c-7e2d4b1c6a90")
"""Namespace of the outbox event ids (uuid5)."""

_ZERO = Decimal(0)


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


_NAMESPACE_SHA1 = hashlib.sha1(EVENT_NAMESPACE.bytes)
# uuid5: the first 128 of SHA-1(namespace + name)'s 160 bits, version nibble 5, RFC 4122 variant bits 10.
_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x5000 << 64) | (0x8000 << 48)
_new_object = object.__new__
_set_slot = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def _uuid5(name: str) -> uuid.UUID:
    """Return uuid.uuid5(EVENT_NAMESPACE, name) in under half the time (a group makes many).

    The UUID is built the way ``uuid.UUID.__init__`` ends (its two slots set), without re-checking a value
    that is a 128-bit int by construction.
    """
    sha1 = _NAMESPACE_SHA1.copy()
    sha1.update(name.encode())
    made: uuid.UUID = _new_object(uuid.UUID)
    _set_slot(made, "int", int.from_bytes(sha1.digest()) >> 32 & _UUID_CLEAR | _UUID_SET)
    _set_slot(made, "is_safe", _SAFE_UNKNOWN)
    return made


def rfc3339(moment: datetime) -> str:
    """Render a UTC datetime as RFC 3339 with microseconds ("2026-11-24T10:00:00.123456Z").

    ``isoformat`` writes exactly these fields (then an offset, if any, which is cut off), a third of
    strftime's cost, and always four digits of year.
    """
    return moment.isoformat(timespec="microseconds")[:26] + "Z"


def build_rows(facts: Iterable[Facts]) -> RowSet:
    """Return the rows that commit `facts` (in the order given)."""
    builder = RowsBuilder()
    for fact in facts:
        builder.add(fact)
    return builder.finish()


class RowsBuilder:
    """The rows of a group built as its facts come: `add` each fact in order, then `finish` once.

    `build_rows(facts)` is every fact added, then finished; the writer process adds each frame's facts
    while the batch before them commits, and finishes when its committer is free.
    """

    __slots__ = ("_builder",)

    def __init__(self) -> None:
        self._builder = _RowBuilder(complete=True)

    @property
    def facts(self) -> int:
        """The number of facts added."""
        return self._builder.rows.facts

    def add(self, fact: Facts) -> None:
        """Add the next fact of the group."""
        builder = self._builder
        if isinstance(fact, PairFacts):
            builder.add_pair_facts(fact)
            if type(fact) is WalletSettledFacts:
                builder.rows.wallet_commands += wallet_commands_of(fact.spec, fact.events)
                builder.settled_at_wallet += 1
        else:
            builder.add_transfer(fact)

    def finish(self) -> RowSet:
        """The rows of every fact added (the builder is used up)."""
        return self._builder.finish()


def build_order_rows(facts: PairFacts) -> RowSet:
    """The `orders`, `order_updates`, `client_order_ids` and `trades` that `build_rows([facts])` makes,
    and nothing else: no ledger entries, balance deltas or outbox events (about a seventh of the cost).

    The same fold as `build_rows` with the money and the events left out, for an answer that renders a
    command's orders and trades without writing them.
    """
    builder = _RowBuilder(complete=False)
    builder.add_pair_facts(facts)
    return builder.finish()


# An order's row while the group is built: a list in `OrderRow` field order. A new order's list is
# complete from its first event; an older order's list holds only what the group set (None: unchanged).
_STATUS = ORDER_COLUMNS.index("status")
_PRICE = ORDER_COLUMNS.index("price")
_QUANTITY = ORDER_COLUMNS.index("quantity")
_FILLED_QUANTITY = ORDER_COLUMNS.index("filled_quantity")
_FILLED_QUOTE = ORDER_COLUMNS.index("filled_quote")
_REJECT_REASON = ORDER_COLUMNS.index("reject_reason")
_PRIORITY = ORDER_COLUMNS.index("priority")
_UPDATED_SEQUENCE = ORDER_COLUMNS.index("updated_sequence")
_UPDATED_AT = ORDER_COLUMNS.index("updated_at")
_WIDTH = len(ORDER_COLUMNS)

# A ledger movement before conversion: (user, asset, kind, atoms, available Δ atoms, locked Δ atoms,
# order id, trade id, timestamp µs).
_Movement = tuple[int, str, str, int, int, int, int | None, str | None, int]

_tuple = tuple.__new__
"""`_tuple(SomeRow, fields)`: a NamedTuple from all its fields in order, skipping its Python-level __new__."""

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Memo(dict[_K, _V]):
    """A dict that makes a missing value with `make(key)` and keeps it (a hit is a plain dict lookup)."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[_K], _V]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: _K) -> _V:
        value = self[key] = self._make(key)
        return value


class _Stamps(dict[int, str]):
    """`rfc3339` per timestamp (µs since the Unix epoch), made from its second's text (made once)."""

    __slots__ = ("_seconds",)

    def __init__(self) -> None:
        super().__init__()
        self._seconds: dict[int, str] = {}  # per second: the text up to the "." ("2026-11-24T10:00:00.")

    def __missing__(self, timestamp_us: int) -> str:
        second, micro = divmod(timestamp_us, 1_000_000)
        prefix = self._seconds.get(second)
        if prefix is None:
            prefix = self._seconds[second] = rfc3339(datetime_of_us(second * 1_000_000))[:-7]
        text = self[timestamp_us] = prefix + str(1_000_000 + micro)[1:] + "Z"
        return text


def _user_of(user_id: str) -> tuple[int, str]:
    """The database user id of a core user id, and its text (as payloads carry it)."""
    number = database_user_id(user_id)
    return number, str(number)


class _RowBuilder:
    """Accumulates the rows of one group, fact by fact (see "Cost" in the module docstring)."""

    def __init__(self, *, complete: bool) -> None:
        self.complete = complete  # False: order and trade rows only (`build_order_rows`)
        self.rows = RowSet()
        self.new_orders: dict[str, list[Any]] = {}  # per order id, in first-event order
        self.old_orders: dict[str, list[Any]] = {}
        self.movements: list[_Movement] = []
        self.balance_sums: dict[tuple[int, str], list[int]] = {}  # (user, asset) → [available, locked]
        self.progress: dict[str, PairProgress] = {}
        self.events: dict[str | None, list[OutboxEvent]] = {}  # per symbol (None: transfers), in order
        self.times: _Memo[int, datetime] = _Memo(datetime_of_us)  # per timestamp (µs)
        self.stamps = _Stamps()  # per timestamp (µs): RFC 3339
        self.amounts: _Memo[int, Decimal] = _Memo(from_atoms)  # per atom count
        self.users: _Memo[str, tuple[int, str]] = _Memo(_user_of)  # per core user id
        self.spec: PairSpec
        self.symbol = ""
        self._events: list[OutboxEvent] = []  # the list of the fact being added (in `events`)
        self.settled_at_wallet = 0  # WalletSettledFacts added (remote wallet mode)

    # -- entry points -------------------------------------------------------------------------------

    def add_pair_facts(self, facts: PairFacts) -> None:
        """Add the events of one command."""
        self.rows.facts += 1
        if not facts.events:
            return
        self.spec = spec = facts.spec
        self.symbol = symbol = spec.symbol
        events = self.events.get(symbol)
        if events is None:
            events = self.events[symbol] = []
        self._events = events
        first_movement = len(self.movements)
        last_price = None
        for event in facts.events:
            _HANDLERS[type(event)](self, event)
            if type(event) is TradeExecuted:
                last_price = spec.ticks_to_price(event.price)
        last = facts.events[-1]
        previous = self.progress.get(symbol)
        if last_price is None and previous is not None:
            last_price = previous.last_price
        self.progress[symbol] = _tuple(PairProgress, (symbol, last.sequence, last_price))
        self._balance_events(first_movement, symbol, last.sequence, f"{symbol}:{last.sequence}",
                             last.timestamp)

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
        times, amounts = self.times, self.amounts
        rows.orders = [_tuple(OrderRow, row) for row in self.new_orders.values()]
        rows.order_updates = [
            OrderUpdate(
                order_id, times[timestamp_us_of(order_id)], row[_STATUS], row[_FILLED_QUANTITY],
                row[_FILLED_QUOTE], row[_PRICE], row[_QUANTITY], row[_PRIORITY], row[_REJECT_REASON],
                row[_UPDATED_SEQUENCE], row[_UPDATED_AT],
            )
            for order_id, row in ((int(key), row) for key, row in self.old_orders.items())
        ]
        if self.settled_at_wallet:  # remote wallet: the balances live at the service
            if self.settled_at_wallet != rows.facts:
                raise ValueError("a group mixes facts settled at the wallet service with local ones")
        else:
            rows.ledger_entries = [
                _tuple(LedgerRow, (user_id, asset, kind, amounts[atoms], amounts[available], amounts[locked],
                                   order_id, trade_id, times[timestamp]))
                for user_id, asset, kind, atoms, available, locked, order_id, trade_id, timestamp
                in self.movements
            ]
            rows.balance_deltas = [
                _tuple(BalanceDelta, (user_id, asset, amounts[available], amounts[locked]))
                for (user_id, asset), (available, locked) in sorted(self.balance_sums.items())
                if available or locked
            ]
        rows.outbox = [
            OutboxMessage(symbol, events[0].sequence, events[-1].sequence, events)
            for symbol, events in self.events.items()
            if events
        ]
        rows.pairs = sorted(self.progress.values())
        return rows

    # -- orders -------------------------------------------------------------------------------------

    def _new_order(self, event: OrderAccepted | OrderRejected) -> None:
        spec, symbol, order_id, sequence = self.spec, self.symbol, event.order_id, event.sequence
        oid = int(order_id)
        created_at = self.times[timestamp_us_of(oid)]
        user_id, user_text = self.users[event.user_id]
        price = None if event.price is None else spec.ticks_to_price(event.price)
        stop_price = None if event.stop_price is None else spec.ticks_to_price(event.stop_price)
        quantity = None if event.quantity is None else spec.lots_to_quantity(event.quantity)
        quote_quantity = None if event.quote_quantity is None else self.amounts[event.quote_quantity]
        status, side, order_type = str(event.status), str(event.side), str(event.order_type)
        tif, stp = str(event.time_in_force), str(event.self_trade_prevention)
        reason = str(event.reason) if type(event) is OrderRejected else None
        client_order_id = event.client_order_id
        self.new_orders[order_id] = [
            oid, user_id, symbol, side, order_type, status, price, stop_price, quantity, quote_quantity,
            _ZERO, _ZERO, tif, event.post_only, stp, reason, client_order_id, sequence, sequence, sequence,
            created_at, self.times[event.timestamp],
        ]
        if client_order_id is not None:
            self.rows.client_order_ids.append(
                _tuple(ClientOrderIdRow, (user_id, client_order_id, oid, created_at))
            )
        if not self.complete:
            return
        self._order_event(
            "order.accepted" if reason is None else "order.rejected", order_id, status, sequence, {
                "order_id": order_id, "user_id": user_text, "symbol": symbol, "status": status,
                "sequence": sequence, "timestamp": self.stamps[event.timestamp],
                "client_order_id": client_order_id, "side": side, "type": order_type,
                "price": None if price is None else format_decimal(price),
                "stop_price": None if stop_price is None else format_decimal(stop_price),
                "quantity": None if quantity is None else format_decimal(quantity),
                "quote_quantity": None if quote_quantity is None else format_decimal(quote_quantity),
                "time_in_force": tif, "post_only": event.post_only, "self_trade_prevention": stp,
                "reject_reason": reason,
            },
        )

    def _order_row(self, order_id: str, sequence: int, timestamp: int) -> list[Any]:
        """Return the order's row as the group leaves it, updated_sequence and updated_at set."""
        row = self.new_orders.get(order_id) or self.old_orders.get(order_id)
        if row is None:
            row = self.old_orders[order_id] = [None] * _WIDTH
        row[_UPDATED_SEQUENCE] = sequence
        row[_UPDATED_AT] = self.times[timestamp]
        return row

    def _fill(self, order_id: str, status: str, filled: int, cumulative_quote: int, sequence: int,
              timestamp: int) -> list[Any]:
        """Set the order's status and fills; return its row."""
        row = self._order_row(order_id, sequence, timestamp)
        row[_STATUS] = status
        row[_FILLED_QUANTITY] = self.spec.lots_to_quantity(filled)
        row[_FILLED_QUOTE] = self.amounts[cumulative_quote]
        return row

    def _on_cancelled(self, event: OrderCancelled | OrderExpired) -> None:
        order_id, sequence = event.order_id, event.sequence
        filled, quote = event.filled_quantity, event.cumulative_quote
        expired = type(event) is OrderExpired
        status = "EXPIRED" if expired else "CANCELLED"
        row = self._fill(order_id, status, filled, quote, sequence, event.timestamp)
        if expired:
            assert type(event) is OrderExpired
            row[_REJECT_REASON] = str(event.reason)
        if not self.complete:
            return
        average = self.spec.average_price(filled, quote)
        payload = {
            "order_id": order_id, "user_id": self.users[event.user_id][1], "symbol": self.symbol,
            "status": status, "sequence": sequence, "timestamp": self.stamps[event.timestamp],
            "filled_quantity": self._quantity(filled), "filled_quote": format_atoms(quote),
            "average_price": None if average is None else format_decimal(average),
            "remaining_quantity": self._quantity(event.remaining_quantity),
        }
        if expired:
            payload["reject_reason"] = row[_REJECT_REASON]
        self._order_event("order.expired" if expired else "order.cancelled", order_id, status, sequence,
                          payload)

    def _on_triggered(self, event: StopTriggered) -> None:
        order_id, sequence = event.order_id, event.sequence
        row = self._order_row(order_id, sequence, event.timestamp)
        row[_STATUS] = "OPEN"
        row[_PRIORITY] = sequence
        if not self.complete:
            return
        self._order_event("order.triggered", order_id, "OPEN", sequence, {
            **self._head(order_id, event.user_id, "OPEN", sequence, event.timestamp),
            "stop_price": self._price(event.stop_price), "last_price": self._price(event.last_price),
        })

    def _on_amended(self, event: OrderAmended) -> None:
        spec = self.spec
        order_id, sequence, status = event.order_id, event.sequence, str(event.status)
        row = self._order_row(order_id, sequence, event.timestamp)
        row[_STATUS] = status
        row[_PRICE] = spec.ticks_to_price(event.price)
        row[_QUANTITY] = spec.lots_to_quantity(event.quantity)
        row[_PRIORITY] = event.priority
        if not self.complete:
            return
        self._order_event("order.amended", order_id, status, sequence, {
            **self._head(order_id, event.user_id, status, sequence, event.timestamp),
            "price": format_decimal(row[_PRICE]), "quantity": format_decimal(row[_QUANTITY]),
            "remaining_quantity": self._quantity(event.remaining_quantity),
            "requeued": event.requeued,
        })

    # -- trades and money ---------------------------------------------------------------------------

    def _on_trade(self, event: TradeExecuted) -> None:
        spec, symbol, sequence, timestamp = self.spec, self.symbol, event.sequence, event.timestamp
        trade_id = event.trade_id(symbol)
        buyer, buyer_text = self.users[event.buyer_user_id]
        seller, seller_text = self.users[event.seller_user_id]
        buyer_order, seller_order = int(event.buyer_order_id), int(event.seller_order_id)
        amounts = self.amounts
        row = TradeRow(
            trade_id, symbol, spec.ticks_to_price(event.price), spec.lots_to_quantity(event.quantity),
            amounts[event.quote_amount], buyer_order, seller_order, buyer, seller, str(event.taker_side),
            amounts[event.buyer_fee], amounts[event.seller_fee], self.times[timestamp], sequence,
        )
        self.rows.trades.append(row)
        complete = self.complete
        for order_id, user_id, status_enum, filled, quote in (
            (event.buyer_order_id, event.buyer_user_id, event.buyer_status, event.buyer_filled,
             event.buyer_cumulative_quote),
            (event.seller_order_id, event.seller_user_id, event.seller_status, event.seller_filled,
             event.seller_cumulative_quote),
        ):
            status = str(status_enum)
            self._fill(order_id, status, filled, quote, sequence, timestamp)
            if not complete:
                continue
            average = spec.average_price(filled, quote)
            self._order_event("order.traded", order_id, status, sequence, {
                "order_id": order_id, "user_id": self.users[user_id][1], "symbol": symbol, "status": status,
                "sequence": sequence, "timestamp": self.stamps[timestamp], "trade_id": trade_id,
                "filled_quantity": self._quantity(filled), "filled_quote": format_atoms(quote),
                "average_price": None if average is None else format_decimal(average),
            })
        if not complete:
            return
        self._settle(event, trade_id, buyer, seller, buyer_order, seller_order)
        self._events.append(OutboxEvent(
            _uuid5(f"{symbol}:{sequence}:trade"), "trade.executed", f"trade.{symbol}", sequence, {
                "id": trade_id, "symbol": symbol, "price": format_decimal(row.price),
                "quantity": format_decimal(row.quantity),
                "quote_quantity": format_decimal(row.quote_quantity), "buyer_order_id": str(buyer_order),
                "seller_order_id": str(seller_order), "buyer_user_id": buyer_text,
                "seller_user_id": seller_text, "taker_side": row.taker_side,
                "buyer_fee": format_decimal(row.buyer_fee), "seller_fee": format_decimal(row.seller_fee),
                "executed_at": self.stamps[timestamp], "sequence": sequence,
            },
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
        if not self.complete:
            return
        amount = event.amount
        self.movements.append((
            self.users[event.user_id][0], event.asset, "RESERVE", amount, -amount, amount,
            int(event.order_id), None, event.timestamp,
        ))

    def _on_released(self, event: FundsReleased) -> None:
        if not self.complete:
            return
        amount = event.amount
        self.movements.append((
            self.users[event.user_id][0], event.asset, "RELEASE", amount, amount, -amount,
            int(event.order_id), None, event.timestamp,
        ))

    # -- outbox ------------------------------------------------------------------------------------

    def _head(self, order_id: str, user_id: str, status: str, sequence: int,
              timestamp: int) -> dict[str, Any]:
        """The fields every order event's payload starts with."""
        return {
            "order_id": order_id, "user_id": self.users[user_id][1], "symbol": self.symbol,
            "status": status, "sequence": sequence, "timestamp": self.stamps[timestamp],
        }

    def _order_event(self, kind: str, order_id: str, status: str, sequence: int,
                     payload: dict[str, Any]) -> None:
        symbol = self.symbol
        self._events.append(OutboxEvent(
            _uuid5(f"{symbol}:{sequence}:order:{order_id}"), kind, f"order.{symbol}.{status}", sequence,
            payload,
        ))

    def _balance_events(self, first: int, symbol: str | None, sequence: int | None, kind_prefix: str,
                        timestamp: int) -> None:
        """Add one balance event per (user, asset) the movements since `first` changed."""
        if len(self.movements) == first:
            return
        stamp = self.stamps[timestamp]
        for (user_id, asset), (available, locked) in _balance_sums(self.movements[first:]):
            _add(self.balance_sums, (user_id, asset), available, locked)  # the group's balance deltas
            self._events.append(OutboxEvent(
                _uuid5(f"{kind_prefix}:balance:{user_id}:{asset}"), "balance.changed", f"balance.{asset}",
                sequence, {
                    "user_id": str(user_id), "asset": asset, "available_delta": format_atoms(available),
                    "locked_delta": format_atoms(locked), "symbol": symbol, "sequence": sequence,
                    "timestamp": stamp,
                },
            ))

    def _price(self, ticks: int) -> str:
        return format_decimal(self.spec.ticks_to_price(ticks))

    def _quantity(self, lots: int) -> str:
        return format_decimal(self.spec.lots_to_quantity(lots))


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


def _balance_sums(movements: list[_Movement]) -> list[tuple[tuple[int, str], list[int]]]:
    """Sum movements per (user, asset) in atoms; leave out the zero sums; sort by (user, asset)."""
    sums: dict[tuple[int, str], list[int]] = {}
    for user_id, asset, _, _, available, locked, _, _, _ in movements:
        _add(sums, (user_id, asset), available, locked)
    return [item for item in sorted(sums.items()) if item[1][0] or item[1][1]]


def _add(sums: dict[tuple[int, str], list[int]], key: tuple[int, str], available: int, locked: int) -> None:
    """Add (available, locked) atoms to the sums of `key`."""
    total = sums.get(key)
    if total is None:
        sums[key] = [available, locked]
    else:
        total[0] += available
        total[1] += locked


