"""A user's order and trade history, read from PostgreSQL: the read side of the REST API's history routes.

Everything here is scoped to one user: another user's order or trade is simply not found (None, or an
empty list), exactly like an unknown id, so the HTTP layer answers 404 for both.

Rows come back as the writer's own row types (`storage.rows.OrderRow`, `TradeRow`), so stored and
freshly committed objects render through one function. They are equal (``==``) to what
`build_rows` made for the same facts; timestamps are UTC (`datetime.UTC`), amounts are the stored
``numeric(38,8)`` values (8 decimal places: render them with `engine.format_decimal`, as for the
writer's rows, whose scale follows the pair spec's).

Lists are newest first with keyset pagination: `Page.next_cursor` is an opaque URL-safe string to pass
back as `cursor` for the next page, None when there is none (one row more than asked is read to know).
A cursor names a position, never a user: the user scope always comes from `user_id`. It carries a
checksum, so a malformed or altered cursor raises `ValidationError(field="cursor")`; a cursor of one
list is refused by the other. Cursors of one list stay valid across filter changes (they are positions).

Efficiency (indexes: migrations 0002, 0006): every query is an index range scan that stops after
``limit + 1`` rows. Orders and trades are time-partitioned (trades daily, so years of history are
hundreds of partitions); a query touching every partition pays for all of them even to return a few
rows. Lists and lookups therefore read time windows that widen backwards from the cursor (or now) --
trades: the last day, week, month, year, then the rest (`TRADE_WINDOWS`); orders: the last month, year,
then the rest (`ORDER_WINDOWS`) -- stopping as soon as the page is full. An active user's page touches
one or two partitions; only a sparse history reaches the older windows. The windows split the time line
exactly, so the result is the same as one query over everything.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, NamedTuple, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from tradeengine.engine.errors import UnknownSymbol, ValidationError
from tradeengine.storage.database import storage_errors
from tradeengine.storage.ids import MAX_ORDER_ID, created_at_of, datetime_of_us
from tradeengine.storage.rows import ORDER_COLUMNS, TRADE_COLUMNS, OrderRow, TradeRow

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "MAX_LIST_LIMIT",
    "ORDER_STATUSES",
    "Page",
    "UserTradeRow",
    "get_order",
    "get_order_by_client_id",
    "get_orders",
    "get_user_trade",
    "list_orders",
    "list_user_trades",
]

DEFAULT_LIST_LIMIT = 50
"""Page size of `list_orders` and `list_user_trades` when none is given."""
MAX_LIST_LIMIT = 500
"""Largest page size of `list_orders` and `list_user_trades` (the smallest is 1)."""

ORDER_STATUSES = frozenset({
    "PENDING_TRIGGER", "OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "EXPIRED", "REJECTED",
})
SIDES = frozenset({"BUY", "SELL"})
_LIVE_STATUSES = frozenset({"OPEN", "PARTIALLY_FILLED", "PENDING_TRIGGER"})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list, newest first; `next_cursor` reads the next page (None: this is the last)."""

    items: list[T]
    next_cursor: str | None


class UserTradeRow(NamedTuple):
    """A trade as one of its parties sees it: the `TradeRow` fields, then the caller's view.

    `side` is BUY when the caller was the buyer; `role` is TAKER when that side is the trade's
    `taker_side`, else MAKER; `fee` is what the caller paid, in `fee_asset` (a buyer pays in the base
    asset, a seller in the quote asset); `order_id` is the caller's order. A self-trade (the same user on
    both sides) has two: the BUY view and the SELL view.
    """

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
    order_id: int
    side: str
    role: str
    fee: Decimal
    fee_asset: str

    @property
    def trade(self) -> TradeRow:
        """The trade itself, as the writer wrote it."""
        return TradeRow._make(self[:_TRADE_WIDTH])


_TRADE_WIDTH = len(TRADE_COLUMNS)

# -- columns and row conversion (shared with storage.market) ---------------------------------------------

_ENUM_COLUMNS = frozenset({"side", "type", "status", "time_in_force", "self_trade_prevention", "taker_side"})


def select_list(columns: Sequence[str], alias: str) -> sql.Composable:
    """``alias.col, ...`` for `columns`, enum columns cast to text (named as the column)."""
    parts = []
    for column in columns:
        ref = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))
        if column in _ENUM_COLUMNS:
            ref = sql.SQL("{}::text AS {}").format(ref, sql.Identifier(column))
        parts.append(ref)
    return sql.SQL(", ").join(parts)


ORDER_SELECT = select_list(ORDER_COLUMNS, "o")
TRADE_SELECT = select_list(TRADE_COLUMNS, "t")

_ORDER_TIMES = (ORDER_COLUMNS.index("created_at"), ORDER_COLUMNS.index("updated_at"))
_EXECUTED_AT = TRADE_COLUMNS.index("executed_at")


def utc(moment: datetime) -> datetime:
    """The same instant with `datetime.UTC` as its zone (psycopg gives the session's zone)."""
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def order_row(row: Sequence[Any]) -> OrderRow:
    """An `OrderRow` from a row selected with `ORDER_SELECT`."""
    values = list(row)
    for index in _ORDER_TIMES:
        values[index] = utc(values[index])
    return OrderRow(*values)


def trade_row(row: Sequence[Any]) -> TradeRow:
    """A `TradeRow` from the first columns of a row selected with `TRADE_SELECT`."""
    values = list(row[:_TRADE_WIDTH])
    values[_EXECUTED_AT] = utc(values[_EXECUTED_AT])
    return TradeRow(*values)


def check_limit(limit: object, maximum: int) -> int:
    """Return `limit` when it is an int in 1..maximum, else raise ValidationError(field="limit")."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise ValidationError(f"limit must be an integer from 1 to {maximum}, got {limit!r}", field="limit")
    return limit


def raise_if_unknown_symbol(conn: psycopg.Connection[Any], symbol: str) -> None:
    """Raise UnknownSymbol(field="symbol") when no pair has this symbol."""
    if conn.execute("SELECT 1 FROM pairs WHERE symbol = %s", (symbol,)).fetchone() is None:
        raise UnknownSymbol(f"unknown symbol {symbol}", field="symbol")


# -- time windows ---------------------------------------------------------------------------------------

_DAY = timedelta(days=1)
ORDER_WINDOWS: tuple[timedelta | None, ...] = (31 * _DAY, 366 * _DAY, None)
"""How far back each successive orders window reaches (orders are partitioned by month)."""
TRADE_WINDOWS: tuple[timedelta | None, ...] = (_DAY, 7 * _DAY, 30 * _DAY, 365 * _DAY, None)
"""How far back each successive trades window reaches (trades are partitioned by day)."""


def windows(anchor: datetime, first_upper: datetime | None,
            spans: Iterable[timedelta | None]) -> Iterator[tuple[datetime | None, datetime | None]]:
    """Yield (lower, upper) bounds, lower exclusive and upper inclusive (None: unbounded).

    The first window is (anchor - spans[0], first_upper]; each next one ends where the previous one
    began; the last span is None (everything older). Together they cover (-inf, first_upper] exactly.
    """
    upper = first_upper
    for span in spans:
        lower = None if span is None else anchor - span
        yield lower, upper
        upper = lower


def window_conditions(alias: str, column: str, lower: datetime | None, upper: datetime | None,
                      params: dict[str, Any]) -> list[sql.Composable]:
    """The conditions ``alias.column > lower`` and ``<= upper`` (values known when planning, so
    PostgreSQL prunes the partitions outside the window); adds their values to `params`."""
    name = sql.Identifier(alias, column)
    conditions: list[sql.Composable] = []
    if lower is not None:
        params["window_lower"] = lower
        conditions.append(sql.SQL("{} > %(window_lower)s").format(name))
    if upper is not None:
        params["window_upper"] = upper
        conditions.append(sql.SQL("{} <= %(window_upper)s").format(name))
    return conditions


# -- cursors --------------------------------------------------------------------------------------------

_CURSOR_KEY = b"tradeengine.history.cursor.v1"
_CURSOR_MAX_LENGTH = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SYMBOL = re.compile(r"[A-Z0-9]{2,12}-[A-Z0-9]{2,12}")
_UNSIGNED = re.compile(r"[0-9]{1,19}")


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _checksum(payload: str) -> str:
    return hashlib.blake2b(payload.encode(), key=_CURSOR_KEY, digest_size=8).hexdigest()


def _encode_cursor(kind: str, *fields: object) -> str:
    payload = ".".join([kind, *map(str, fields)])
    text = f"{payload}.{_checksum(payload)}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _bad_cursor(reason: str) -> ValidationError:
    return ValidationError(f"cursor is not valid ({reason}): pass back a next_cursor unchanged",
                           field="cursor")


def _decode_cursor(cursor: object, kind: str, width: int) -> list[str]:
    """Return the `width` fields of a cursor made by `_encode_cursor(kind, ...)`, or raise."""
    if not isinstance(cursor, str) or not 0 < len(cursor) <= _CURSOR_MAX_LENGTH:
        raise _bad_cursor("not a short non-empty string")
    try:
        text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_cursor("not base64url") from exc
    payload, _, checksum = text.rpartition(".")
    if not payload or checksum != _checksum(payload):
        raise _bad_cursor("checksum mismatch")
    fields = payload.split(".")
    if fields[0] != kind or len(fields) != width + 1:
        raise _bad_cursor("a cursor of another list")
    return fields[1:]


def _cursor_time(text: str) -> datetime:
    if not _UNSIGNED.fullmatch(text):
        raise _bad_cursor("bad timestamp")
    try:
        return datetime_of_us(int(text))
    except OverflowError as exc:
        raise _bad_cursor("timestamp out of range") from exc


def _cursor_int(text: str) -> int:
    if not _UNSIGNED.fullmatch(text) or int(text) > MAX_ORDER_ID:
        raise _bad_cursor("bad number")
    return int(text)


# -- orders ---------------------------------------------------------------------------------------------


def list_orders(
    pool: ConnectionPool,
    user_id: int,
    *,
    symbol: str | None = None,
    statuses: Iterable[str] | None = None,
    side: str | None = None,
    limit: int = DEFAULT_LIST_LIMIT,
    cursor: str | None = None,
) -> Page[OrderRow]:
    """Return the user's orders newest first (created_at DESC, id DESC), one page of at most `limit`.

    Filters (all optional, combined with AND): `symbol`; `statuses`, any of `ORDER_STATUSES` (an order
    matches one of them); `side`, BUY or SELL. `limit` is 1..500 (`MAX_LIST_LIMIT`), default 50.
    Raises ValidationError with field "limit", "status", "side" or "cursor" for a bad argument, and
    UnknownSymbol(field="symbol") when the page is empty and no pair has that symbol.

    Index: orders_by_user_newest, or orders_open_by_user_newest when every status asked for is a live
    one (OPEN, PARTIALLY_FILLED, PENDING_TRIGGER); the statuses are written into the SQL as literals
    (from the closed set) so the planner can use that partial index.
    """
    limit = check_limit(limit, MAX_LIST_LIMIT)
    status_set = _check_statuses(statuses)
    if side is not None and side not in SIDES:
        raise ValidationError(f"side must be BUY or SELL, got {side!r}", field="side")
    after: tuple[datetime, int] | None = None
    if cursor is not None:
        created_text, id_text = _decode_cursor(cursor, "o", 2)
        after = (_cursor_time(created_text), _cursor_int(id_text))

    filters: list[sql.Composable] = [sql.SQL("o.user_id = %(user_id)s")]
    params: dict[str, Any] = {"user_id": user_id}
    if symbol is not None:
        filters.append(sql.SQL("o.symbol = %(symbol)s"))
        params["symbol"] = symbol
    if status_set is not None:
        filters.append(sql.SQL("o.status IN ({})").format(
            sql.SQL(", ").join(sql.Literal(status) for status in sorted(status_set))))
    if side is not None:
        filters.append(sql.SQL("o.side = %(side)s::order_side"))
        params["side"] = side

    rows: list[OrderRow] = []
    anchor = after[0] if after is not None else datetime.now(UTC)
    with storage_errors("listing orders"), pool.connection() as conn:
        for number, (lower, upper) in enumerate(
                windows(anchor, None if after is None else after[0], ORDER_WINDOWS)):
            where = list(filters)
            window_params = dict(params, limit=limit + 1 - len(rows))
            where += window_conditions("o", "created_at", lower, upper, window_params)
            if after is not None and number == 0:
                where.append(sql.SQL("(o.created_at, o.id) < (%(after_created)s, %(after_id)s)"))
                window_params.update(after_created=after[0], after_id=after[1])
            query = sql.SQL(
                "SELECT {columns} FROM orders AS o WHERE {where} "
                "ORDER BY o.created_at DESC, o.id DESC LIMIT %(limit)s"
            ).format(columns=ORDER_SELECT, where=sql.SQL(" AND ").join(where))
            rows += map(order_row, conn.execute(query, window_params).fetchall())
            if len(rows) > limit:
                break
        if not rows and symbol is not None:
            raise_if_unknown_symbol(conn, symbol)
    if len(rows) > limit:
        last = rows[limit - 1]
        return Page(rows[:limit], _encode_cursor("o", _us(last.created_at), last.id))
    return Page(rows, None)


def _check_statuses(statuses: Iterable[str] | None) -> frozenset[str] | None:
    if statuses is None:
        return None
    if isinstance(statuses, str):
        statuses = [statuses]
    status_set = frozenset(statuses)
    unknown = status_set - ORDER_STATUSES
    if unknown or not status_set:
        raise ValidationError(
            f"status must be one or more of {', '.join(sorted(ORDER_STATUSES))}; got "
            f"{', '.join(sorted(map(repr, unknown))) or 'none'}", field="status")
    return status_set


_ORDER_BY_ID = sql.SQL(
    "SELECT {} FROM orders AS o WHERE o.id = %s AND o.created_at = %s AND o.user_id = %s"
).format(ORDER_SELECT)

_ORDER_BY_CLIENT_ID = sql.SQL(
    "SELECT {} FROM client_order_ids AS c "
    "JOIN orders AS o ON o.id = c.order_id AND o.created_at = c.created_at AND o.user_id = c.user_id "
    "WHERE c.user_id = %s AND c.client_order_id = %s"
).format(ORDER_SELECT)


def get_order(pool: ConnectionPool, user_id: int, order_id: int) -> OrderRow | None:
    """Return the user's order `order_id`, or None (no such order, or another user's).

    The order's created_at is the instant in its id, so the lookup reads one month partition's primary
    key. An id outside 1..2^63-1 is simply not found.
    """
    if isinstance(order_id, bool) or not isinstance(order_id, int) or not 0 < order_id <= MAX_ORDER_ID:
        return None
    with storage_errors("reading an order"), pool.connection() as conn:
        row = conn.execute(_ORDER_BY_ID, (order_id, created_at_of(order_id), user_id)).fetchone()
    return None if row is None else order_row(row)


_ORDERS_BY_ID = sql.SQL(
    "SELECT {} FROM orders AS o "
    "WHERE o.id = ANY(%s::bigint[]) AND o.created_at = ANY(%s::timestamptz[]) AND o.user_id = %s"
).format(ORDER_SELECT)

MAX_ORDERS_BY_ID = 10_000
"""The most ids `get_orders` reads at once."""


def get_orders(pool: ConnectionPool, user_id: int, order_ids: Iterable[int]) -> list[OrderRow]:
    """Return the user's orders among `order_ids`, in the order of the ids (repeats read once).

    Ids that name no order of the user (unknown, another user's, out of range) are left out. One
    query: the ids' instants are their created_at, so only their month partitions are read, through
    the primary key. At most `MAX_ORDERS_BY_ID` distinct ids (ValueError beyond: a caller's bug).
    """
    wanted = list(dict.fromkeys(
        i for i in order_ids if not isinstance(i, bool) and isinstance(i, int) and 0 < i <= MAX_ORDER_ID))
    if not wanted:
        return []
    if len(wanted) > MAX_ORDERS_BY_ID:
        raise ValueError(f"get_orders reads at most {MAX_ORDERS_BY_ID} ids at once, got {len(wanted)}")
    instants = sorted({created_at_of(i) for i in wanted})
    with storage_errors("reading orders"), pool.connection() as conn:
        rows = conn.execute(_ORDERS_BY_ID, (wanted, instants, user_id)).fetchall()
    # created_at = ANY(...) also admits an id of the list at another id's instant; the writer never
    # stores such a row (created_at is always the instant in the id), so each id matches once.
    found = {row.id: row for row in map(order_row, rows)}
    return [found[i] for i in wanted if i in found]


def get_order_by_client_id(pool: ConnectionPool, user_id: int, client_order_id: str) -> OrderRow | None:
    """Return the user's order with this client order id, or None.

    Through client_order_ids (its primary key), which holds the first order that carried the id; the
    order row is then read from its month partition.
    """
    with storage_errors("reading an order by client order id"), pool.connection() as conn:
        row = conn.execute(_ORDER_BY_CLIENT_ID, (user_id, client_order_id)).fetchone()
    return None if row is None else order_row(row)


# -- trades ---------------------------------------------------------------------------------------------

# The user's trades as buyer and as seller, each read newest first from its own index and cut at the
# limit, merged. The cursor conditions of the two branches differ (see list_user_trades).
_USER_TRADES = """
SELECT u.*, p.base_asset, p.quote_asset FROM (
    (SELECT {columns}, 'BUY' AS view_side FROM trades AS t
     WHERE t.buyer_user_id = %(user_id)s AND {buyer_where}
     ORDER BY t.executed_at DESC, t.symbol DESC, t.sequence DESC LIMIT %(limit)s)
    UNION ALL
    (SELECT {columns}, 'SELL' AS view_side FROM trades AS t
     WHERE t.seller_user_id = %(user_id)s AND {seller_where}
     ORDER BY t.executed_at DESC, t.symbol DESC, t.sequence DESC LIMIT %(limit)s)
) AS u JOIN pairs AS p ON p.symbol = u.symbol
ORDER BY u.executed_at DESC, u.symbol DESC, u.sequence DESC, u.view_side
LIMIT %(limit)s
"""

_TRADE_BY_ID = sql.SQL(
    "SELECT {columns}, p.base_asset, p.quote_asset FROM trades AS t JOIN pairs AS p ON p.symbol = t.symbol "
    "WHERE t.id = %(trade_id)s AND (t.buyer_user_id = %(user_id)s OR t.seller_user_id = %(user_id)s) "
    "AND {window}"
)

_TRADE_ID = re.compile(r"([A-Z0-9]{2,12}-[A-Z0-9]{2,12}):([0-9]{1,19})")


def _views(row: Sequence[Any], user_id: int, side: str | None = None) -> list[UserTradeRow]:
    """The caller's views of a trade row (TRADE_SELECT columns, then base and quote asset)."""
    trade = trade_row(row)
    base, quote = row[-2], row[-1]
    sides = [side] if side is not None else [
        s for s, party in (("BUY", trade.buyer_user_id), ("SELL", trade.seller_user_id)) if party == user_id
    ]
    views = []
    for view_side in sides:
        role = "TAKER" if view_side == trade.taker_side else "MAKER"
        if view_side == "BUY":
            view = (trade.buyer_order_id, "BUY", role, trade.buyer_fee, base)
        else:
            view = (trade.seller_order_id, "SELL", role, trade.seller_fee, quote)
        views.append(UserTradeRow._make((*trade, *view)))
    return views


def list_user_trades(
    pool: ConnectionPool,
    user_id: int,
    *,
    symbol: str | None = None,
    limit: int = DEFAULT_LIST_LIMIT,
    cursor: str | None = None,
) -> Page[UserTradeRow]:
    """Return the trades the user took part in, newest first, one page of at most `limit` views.

    Order: executed_at DESC, then symbol DESC (trades of two pairs at the same microsecond), then
    sequence DESC (one command's trades share its timestamp), then the BUY view before the SELL view of
    a self-trade, whose two views may fall on two pages. `limit` is 1..500, default 50. Raises
    ValidationError(field "limit" or "cursor"), and UnknownSymbol(field="symbol") when the page is empty
    and no pair has that symbol.

    Indexes: trades_by_buyer_time_sequence and trades_by_seller_time_sequence (0006), each read up to
    the page size, merged. The cursor (executed_at, symbol, sequence, side) of the last view becomes a
    row comparison: strictly older for the buyer branch; for the seller branch also the same trade when
    the last view was its BUY view (its SELL view comes next).
    """
    limit = check_limit(limit, MAX_LIST_LIMIT)
    after: tuple[datetime, str, int, str] | None = None
    if cursor is not None:
        time_text, symbol_text, sequence_text, side_text = _decode_cursor(cursor, "t", 4)
        if not _SYMBOL.fullmatch(symbol_text) or side_text not in ("B", "S"):
            raise _bad_cursor("bad trade position")
        after = (_cursor_time(time_text), symbol_text, _cursor_int(sequence_text),
                 "BUY" if side_text == "B" else "SELL")

    base_params: dict[str, Any] = {"user_id": user_id}
    common: list[sql.Composable] = []
    if symbol is not None:
        common.append(sql.SQL("t.symbol = %(symbol)s"))
        base_params["symbol"] = symbol

    rows: list[UserTradeRow] = []
    anchor = after[0] if after is not None else datetime.now(UTC)
    with storage_errors("listing trades"), pool.connection() as conn:
        for number, (lower, upper) in enumerate(
                windows(anchor, None if after is None else after[0], TRADE_WINDOWS)):
            params = dict(base_params, limit=limit + 1 - len(rows))
            where = common + window_conditions("t", "executed_at", lower, upper, params)
            buyer_where, seller_where = list(where), list(where)
            if after is not None and number == 0:
                params.update(after_time=after[0], after_symbol=after[1], after_sequence=after[2])
                position = sql.SQL("(t.executed_at, t.symbol, t.sequence) {} "
                                   "(%(after_time)s, %(after_symbol)s, %(after_sequence)s)")
                buyer_where.append(position.format(sql.SQL("<")))
                seller_where.append(position.format(sql.SQL("<=" if after[3] == "BUY" else "<")))
            query = sql.SQL(_USER_TRADES).format(
                columns=TRADE_SELECT,
                buyer_where=sql.SQL(" AND ").join(buyer_where or [sql.SQL("true")]),
                seller_where=sql.SQL(" AND ").join(seller_where or [sql.SQL("true")]),
            )
            for row in conn.execute(query, params).fetchall():
                rows += _views(row[:-3] + row[-2:], user_id, row[-3])
            if len(rows) > limit:
                break
        if not rows and symbol is not None:
            raise_if_unknown_symbol(conn, symbol)
    if len(rows) > limit:
        last = rows[limit - 1]
        return Page(rows[:limit], _encode_cursor(
            "t", _us(last.executed_at), last.symbol, last.sequence, last.side[0]))
    return Page(rows, None)


def get_user_trade(pool: ConnectionPool, user_id: int, trade_id: str) -> list[UserTradeRow]:
    """Return the user's views of trade `trade_id` ("BTC-USDT:42"): one, two for a self-trade, or none.

    None when the user was not a party, or there is no such trade (a malformed id included).
    executed_at cannot be derived from a trade id, so the trades' primary key (id, executed_at) is
    probed window by window, newest first (see the module docstring); a recent trade costs one or two
    partitions, an old one up to every partition's primary key (one index probe each).
    """
    if not isinstance(trade_id, str) or not _TRADE_ID.fullmatch(trade_id):
        return []
    with storage_errors("reading a trade"), pool.connection() as conn:
        for lower, upper in windows(datetime.now(UTC), None, TRADE_WINDOWS):
            params: dict[str, Any] = {"trade_id": trade_id, "user_id": user_id}
            window = window_conditions("t", "executed_at", lower, upper, params) or [sql.SQL("true")]
            query = _TRADE_BY_ID.format(columns=TRADE_SELECT, window=sql.SQL(" AND ").join(window))
            row = conn.execute(query, params).fetchone()
            if row is not None:
                return _views(row, user_id)
    return []
