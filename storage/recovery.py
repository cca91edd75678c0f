"""Rebuild from the database: pair specs, each pair's live orders, and the start-up check of reserved funds.

`load_pair_state(pool, spec)` reads what `MatchingEngine.restore(snapshots, sequence=, last_price=)` takes
back: the pair's live orders (OPEN, PARTIALLY_FILLED, PENDING_TRIGGER) in sequence order, converted to the
core's units (price/stop_price in ticks, quantity/filled in lots, filled quote in atoms, ids as strings
per `storage.facts`, `priority` from ``orders.priority``), with ``pairs.last_sequence`` and
``pairs.last_price`` (ticks). Orders and pair progress are read in one REPEATABLE READ transaction, so they
come from the same commit even while the writer commits other pairs. A stored value that is not a whole
number of the pair's units fails loudly (`CorruptStoredAmount`): the pair must not start on it.

`check_reserved_funds(balances, pairs)` is the start-up check: for every (user, asset) the locked balance
must equal what the user's live orders reserve (`engine.funds.required_lock` per order, summed per user
and asset with each pair's spec). It returns the differences; `log_discrepancies` logs each one at ERROR.

`load_wallet_reservations(pool, specs)` is the remote wallet's reconciliation input: in ONE snapshot, what
the live orders of every pair reserve and what the undelivered wallet commands will still move from
locked (see `actors.settler`).

Complexity: load_pair_state is one indexed query (the partial index orders_open_by_symbol_sequence),
O(live orders of the pair); check_reserved_funds is O(balances + live orders). Amounts arrive as whole
atoms in text and are divided by the pair's units as ints: 500,000 live orders of one pair load in ~3.2 s
(~1 s of it the query), against ~8 s when psycopg's Decimals were divided (2026-11-25, this machine); the
core then takes them back in ~2 s (`MatchingEngine.restore`, pure Python; ~1.3 s compiled).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from psycopg_pool import ConnectionPool

from tradeengine.engine import (
    ATOMS_PER_UNIT,
    OrderSnapshot,
    OrderStatus,
    OrderType,
    PairSpec,
    SelfTradePrevention,
    Side,
    TimeInForce,
    UnknownSymbol,
    required_lock,
)
from tradeengine.engine.order import BUY, Order
from tradeengine.engine.units import ATOM_PLACES

from .balances import CorruptStoredAmount, decimal_to_units, load_balances
from .database import storage_errors
from .facts import core_user_id
from .pairs import PairRepository
from .wallet_commands import decode_movements

__all__ = [
    "LIVE_STATUSES",
    "BalanceSource",
    "Discrepancy",
    "StoredPairState",
    "WalletReservations",
    "check_database_reserved_funds",
    "check_reserved_funds",
    "load_pair_specs",
    "load_pair_state",
    "load_wallet_reservations",
    "log_discrepancies",
    "reserved_funds",
]

log = logging.getLogger(__name__)

LIVE_STATUSES = ("OPEN", "PARTIALLY_FILLED", "PENDING_TRIGGER")
"""The order statuses a rebuilt pair takes back (the partial index's predicate)."""

_ATOM = Decimal(1) / ATOMS_PER_UNIT

# Amounts come as whole atoms in text: the columns are NUMERIC(38,8), so × 10^8 is an integer (trunc
# only drops the zero scale), and text holds more than a bigint (a quantity of 10^12 is 10^20 atoms).
# int() of such text is ~10 times cheaper than dividing psycopg's Decimal by the pair's unit.
_LIVE_ORDERS = f"""
SELECT id, user_id, side::text, type::text, status::text, trunc(price * {ATOMS_PER_UNIT})::text,
       trunc(stop_price * {ATOMS_PER_UNIT})::text, trunc(quantity * {ATOMS_PER_UNIT})::text,
       trunc(filled_quantity * {ATOMS_PER_UNIT})::text, trunc(filled_quote * {ATOMS_PER_UNIT})::text,
       time_in_force::text, post_only, self_trade_prevention::text, client_order_id, sequence,
       coalesce(priority, sequence)
FROM orders
WHERE symbol = %s AND status IN ('OPEN', 'PARTIALLY_FILLED', 'PENDING_TRIGGER')
ORDER BY sequence, id
"""


class StoredPairState(NamedTuple):
    """What a pair is rebuilt from: live orders in sequence order, last sequence, last price (ticks)."""

    snapshots: list[OrderSnapshot]
    sequence: int
    last_price: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Discrepancy:
    """A (user, asset) whose locked balance differs from what the user's live orders reserve (atoms)."""

    user_id: str
    asset: str
    locked: int
    reserved: int

    @property
    def difference(self) -> int:
        """Locked minus reserved: positive means funds are locked that no order needs."""
        return self.locked - self.reserved


class BalanceSource(Protocol):
    """Anything that can list balances as (user_id, asset) → (available, locked) atoms (the Ledger)."""

    def snapshot(self) -> Mapping[tuple[str, str], tuple[int, int]]:
        """Return every balance."""
        ...


# -- loaders --------------------------------------------------------------------------------------------


def load_pair_specs(pool: ConnectionPool) -> list[tuple[PairSpec, str]]:
    """Return every pair's spec with its status (ACTIVE, HALTED, DELISTED), ordered by symbol."""
    return [
        (
            PairSpec(
                symbol=record.symbol, base_asset=record.base_asset, quote_asset=record.quote_asset,
                tick_size=record.tick_size, lot_size=record.lot_size, min_quantity=record.min_quantity,
                max_quantity=record.max_quantity, min_notional=record.min_notional,
                maker_fee=record.maker_fee, taker_fee=record.taker_fee,
            ),
            record.status,
        )
        for record in PairRepository(pool).list()
    ]


def load_pair_state(pool: ConnectionPool, spec: PairSpec) -> StoredPairState:
    """Return the pair's live orders (sequence order), last sequence and last trade price, in core units."""
    with storage_errors(f"loading the state of {spec.symbol}"), pool.connection() as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _pair_state(conn, spec)


def _pair_state(conn: Any, spec: PairSpec) -> StoredPairState:
    symbol = spec.symbol
    progress = conn.execute(
        "SELECT last_sequence, last_price FROM pairs WHERE symbol = %s", (symbol,)
    ).fetchone()
    rows = conn.execute(_LIVE_ORDERS, (symbol,)).fetchall() if progress is not None else []
    if progress is None:
        raise UnknownSymbol(f"pair {symbol} is not in the database", field="symbol")
    last_sequence, last_price = progress
    tick = _Unit(spec.tick_size, f"the tick size of {symbol}")
    lot = _Unit(spec.lot_size, f"the lot size of {symbol}")
    snapshots = [_snapshot(symbol, tick, lot, row) for row in rows]
    ticks = None if last_price is None else _ticks(spec, last_price, f"{symbol} last_price")
    return StoredPairState(snapshots, int(last_sequence), ticks)


class _Unit:
    """A pair's tick or lot size, and whole atoms (text, as `_LIVE_ORDERS` reads them) counted in it."""

    __slots__ = ("atoms", "size")

    def __init__(self, size: Decimal, what: str) -> None:
        self.size = size
        self.atoms = decimal_to_units(size, _ATOM, what)
        if self.atoms == 0:
            raise CorruptStoredAmount(f"{what} is zero")

    def count(self, atoms: str, order_id: int, field: str, symbol: str) -> int:
        """`atoms` / this unit as an int ≥ 0, or CorruptStoredAmount (naming the order and the field) if it
        is not exactly that."""
        try:
            value = int(atoms)
        except ValueError:  # NaN
            message = f"order {order_id} of {symbol}: {field} is {atoms}, not an amount ≥ 0"
            raise CorruptStoredAmount(message) from None
        units, remainder = divmod(value, self.atoms)
        if value < 0 or remainder:
            amount = Decimal(value).scaleb(-ATOM_PLACES)
            raise CorruptStoredAmount(f"order {order_id} of {symbol}: {field} {amount} is not a whole number "
                                      f"≥ 0 of {self.size}")
        return units


_ATOM_UNIT = _Unit(_ATOM, "an atom")
_SIDES = {member.value: member for member in Side}
_TYPES = {member.value: member for member in OrderType}
_STATUSES = {member.value: member for member in OrderStatus}
_TIME_IN_FORCE = {member.value: member for member in TimeInForce}
_STP = {member.value: member for member in SelfTradePrevention}


def _snapshot(symbol: str, tick: _Unit, lot: _Unit, row: tuple[Any, ...]) -> OrderSnapshot:
    (order_id, user_id, side, order_type, status, price, stop_price, quantity, filled, filled_quote,
     time_in_force, post_only, stp, client_order_id, sequence, priority) = row
    if quantity is None:
        raise CorruptStoredAmount(f"order {order_id} of {symbol} is live ({status}) without a base quantity")
    price_ticks = None if price is None else tick.count(price, order_id, "price", symbol)
    stop_ticks = None if stop_price is None else tick.count(stop_price, order_id, "stop_price", symbol)
    if price_ticks == 0 or stop_ticks == 0:
        raise CorruptStoredAmount(f"order {order_id} of {symbol}: a price is zero")
    return OrderSnapshot(
        order_id=str(order_id),
        user_id=core_user_id(user_id),
        side=_SIDES[side],
        order_type=_TYPES[order_type],
        status=_STATUSES[status],
        price=price_ticks,
        stop_price=stop_ticks,
        quantity=lot.count(quantity, order_id, "quantity", symbol),
        filled_quantity=lot.count(filled, order_id, "filled_quantity", symbol),
        cumulative_quote=_ATOM_UNIT.count(filled_quote, order_id, "filled_quote", symbol),
        time_in_force=_TIME_IN_FORCE[time_in_force],
        post_only=bool(post_only),
        self_trade_prevention=_STP[stp],
        client_order_id=client_order_id,
        sequence=int(sequence),
        priority=int(priority),
    )


def _ticks(spec: PairSpec, price: Decimal, what: str) -> int:
    ticks = decimal_to_units(price, spec.tick_size, what)
    if ticks == 0:
        raise CorruptStoredAmount(f"{what} is zero")
    return ticks


@dataclasses.dataclass(frozen=True, slots=True)
class WalletReservations:
    """One snapshot for the remote wallet's reconciliation (atoms, core user ids).

    `reserved`: what live orders reserve per (user, asset); `pending_locked`: the sum of the locked
    deltas of the undelivered release/settle commands (negative: they will still free that much);
    `pending_voids`: undelivered voids (a reserve of unknown outcome: no exact expectation is possible
    until they are delivered); `refused`: the (user, asset) pairs a refused command touches.
    """

    reserved: dict[tuple[str, str], int]
    pending_locked: dict[tuple[str, str], int]
    pending_voids: int
    refused: frozenset[tuple[str, str]]

    def expected_locked(self) -> dict[tuple[str, str], int]:
        """What the service's locked balances must be now, per (user, asset), before any delivery."""
        expected = dict(self.reserved)
        for key, locked in self.pending_locked.items():
            expected[key] = expected.get(key, 0) - locked
        return {key: amount for key, amount in expected.items() if amount}


_WALLET_COMMANDS = """
SELECT kind, movements::text, refused_at IS NOT NULL FROM wallet_commands WHERE delivered_at IS NULL
"""


def load_wallet_reservations(pool: ConnectionPool, specs: Iterable[PairSpec]) -> WalletReservations:
    """Read live orders of every pair and the undelivered wallet commands in ONE snapshot."""
    with storage_errors("loading the wallet reservations"), pool.connection() as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        pairs = [(spec, _pair_state(conn, spec).snapshots) for spec in specs]
        commands = conn.execute(_WALLET_COMMANDS).fetchall()
    pending: dict[tuple[str, str], int] = {}
    refused: set[tuple[str, str]] = set()
    voids = 0
    for kind, movements, is_refused in commands:
        lines = decode_movements(movements)
        if is_refused:
            refused.update((user, asset) for user, asset, _, _ in lines)
        elif kind == "void":
            voids += 1
        else:
            for user, asset, _, locked in lines:
                pending[(user, asset)] = pending.get((user, asset), 0) + locked
    return WalletReservations(reserved_funds(pairs), pending, voids, frozenset(refused))


# -- the start-up check ---------------------------------------------------------------------------------


def reserved_funds(
    pairs: Iterable[tuple[PairSpec, Iterable[OrderSnapshot]]],
) -> dict[tuple[str, str], int]:
    """Return what live orders reserve: (user_id, asset) → atoms (`required_lock` summed), zeros left out."""
    reserved: dict[tuple[str, str], int] = {}
    for spec, snapshots in pairs:
        for snapshot in snapshots:
            amount = required_lock(spec, _order(snapshot))
            if amount:
                asset = spec.quote_asset if snapshot.side is BUY else spec.base_asset
                key = (snapshot.user_id, asset)
                reserved[key] = reserved.get(key, 0) + amount
    return reserved


def check_reserved_funds(
    balances: Mapping[tuple[str, str], tuple[int, int]] | BalanceSource,
    pairs: Iterable[tuple[PairSpec, Iterable[OrderSnapshot]]],
) -> list[Discrepancy]:
    """Return every (user, asset) whose locked balance differs from what its live orders reserve.

    `balances` is a Ledger (anything with `snapshot()`) or the mapping `load_balances` returns; `pairs` is
    each pair's spec with its live orders (e.g. `load_pair_state(...).snapshots`). Sorted by user, asset.
    Run it while no command is in flight (at start-up): balances and orders must describe one moment.
    """
    held = balances if isinstance(balances, Mapping) else balances.snapshot()
    reserved = reserved_funds(pairs)
    found = []
    for key in sorted(held.keys() | reserved.keys()):
        locked = held[key][1] if key in held else 0
        needed = reserved.get(key, 0)
        if locked != needed:
            found.append(Discrepancy(key[0], key[1], locked, needed))
    return found


def check_database_reserved_funds(pool: ConnectionPool) -> list[Discrepancy]:
    """Run `check_reserved_funds` on the committed balances and the live orders of every pair."""
    balances = load_balances(pool)
    pairs = [(spec, load_pair_state(pool, spec).snapshots) for spec, _ in load_pair_specs(pool)]
    return check_reserved_funds(balances, pairs)


def log_discrepancies(discrepancies: Iterable[Discrepancy], logger: logging.Logger | None = None) -> int:
    """Log each discrepancy at ERROR (user, asset, locked, reserved, in atoms); return how many."""
    logger = logger or log
    count = 0
    for found in discrepancies:
        count += 1
        logger.error(
            "reserved funds mismatch: user %s asset %s locked %d atoms but live orders reserve %d (%+d)",
            found.user_id, found.asset, found.locked, found.reserved, found.difference,
            extra={"user_id": found.user_id, "asset": found.asset, "locked": found.locked,
                   "reserved": found.reserved},
        )
    return count


def _order(snapshot: OrderSnapshot) -> Order:
    """Return a core Order in the snapshot's state (what `required_lock` reads)."""
    order = Order(
        snapshot.order_id, snapshot.user_id, snapshot.side, snapshot.order_type, snapshot.price,
        snapshot.stop_price, snapshot.quantity, None, snapshot.time_in_force, snapshot.post_only,
        snapshot.self_trade_prevention, snapshot.client_order_id, snapshot.status, snapshot.sequence,
    )
    order.filled = snapshot.filled_quantity
    return order
