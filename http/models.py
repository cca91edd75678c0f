"""The types of the HTTP API: they validate requests and they ARE the OpenAPI document.

Every request body and query string is decoded into one of these msgspec Structs (unknown fields are
refused: ``forbid_unknown_fields``), every response is encoded from one, and ``/openapi.json`` is
generated from the same classes (:mod:`tradeengine.http.api`), so the contract cannot drift from the
code. Field names and shapes follow API.md exactly.

Money and sizes travel as JSON strings (``"50000.5"``): request fields are ``DecimalText`` (a plain
non-negative decimal numeral; a JSON number is a wrong type, 400) and become ``Decimal`` in the
resource; the pair's rules (tick, lot, limits) are checked by the engine and answer 422. Responses render
decimals with :func:`tradeengine.engine.units.format_decimal` (no exponent, no trailing zeros).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from tradeengine.actors.ledger import ASSET_PATTERN as LEDGER_ASSET
from tradeengine.engine.validation import CLIENT_ORDER_ID
from tradeengine.storage.market import DEFAULT_CANDLE_LIMIT, MAX_CANDLE_LIMIT


def whole(body: str) -> str:
    """A pattern that `body` must match from the first character to the last.

    msgspec checks patterns with Python's ``re.search``, whose ``$`` also matches before a final newline
    ("my-1\\n" would pass ``^[a-z0-9-]+$``, and then break the database's CHECK of the same pattern at
    commit). ``(?!\\n)`` closes that; it changes nothing for an ECMA-262 reader of the OpenAPI document,
    whose ``$`` never matched there.
    """
    return rf"^{body}(?!\n)$"


DECIMAL_PATTERN = whole(r"[0-9]{1,30}(\.[0-9]{1,30})?")
SYMBOL_PATTERN = whole(r"[A-Z0-9]{2,12}-[A-Z0-9]{2,12}")  # the pairs table's own rule (pairs_symbol_format)
ASSET_PATTERN = whole(LEDGER_ASSET.pattern)  # the ledger's own rule
CLIENT_ORDER_ID_PATTERN = whole(CLIENT_ORDER_ID.pattern)  # the engine's own rule
USER_NAME_PATTERN = whole(r"[A-Za-z0-9._-]+")

PATTERN_MEANINGS = {
    DECIMAL_PATTERN: 'a decimal number written as a JSON string of digits, e.g. "0.5" (at most 30 digits '
                     "before and after the point; no sign, exponent or spaces)",
    SYMBOL_PATTERN: 'a pair symbol BASE-QUOTE, each of 2 to 12 capital letters and digits, e.g. "BTC-USDT"',
    ASSET_PATTERN: 'an asset code of 2 to 12 capital letters and digits, e.g. "USDT"',
    CLIENT_ORDER_ID_PATTERN: "1 to 64 characters of A-Z, a-z, 0-9 and . _ : -",
    USER_NAME_PATTERN: "letters, digits and . _ -",
}
"""What each pattern of a request field asks for, in words (the API's VALIDATION_ERROR messages)."""

DecimalText = Annotated[str, Meta(pattern=DECIMAL_PATTERN, description="a decimal number as a string",
                                  examples=["50000.5"])]
Amount = Annotated[str, Meta(description="a decimal number as a string", examples=["0.5"])]
Timestamp = Annotated[str, Meta(description="RFC 3339 UTC with microseconds",
                                examples=["2026-11-24T10:00:00.123456Z"])]
Symbol = Annotated[str, Meta(pattern=SYMBOL_PATTERN, description="BASE-QUOTE",
                             examples=["BTC-USDT"])]
AssetCode = Annotated[str, Meta(pattern=ASSET_PATTERN, description="an asset code", examples=["USDT"])]
UserId = Annotated[str, Meta(description="opaque user id", examples=["1000"])]
ClientOrderId = Annotated[str, Meta(pattern=CLIENT_ORDER_ID_PATTERN, examples=["my-1"])]
OrderId = Annotated[str, Meta(description="opaque order id", examples=["5764607523034234880"])]

SideName = Literal["BUY", "SELL"]
OrderTypeName = Literal["LIMIT", "MARKET", "STOP_LIMIT", "STOP_MARKET"]
TimeInForceName = Literal["GTC", "IOC", "FOK"]
SelfTradePreventionName = Literal["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "NONE"]
OrderStatusName = Literal["PENDING_TRIGGER", "OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "EXPIRED",
                          "REJECTED"]
PairStatusName = Literal["ACTIVE", "HALTED", "DELISTED"]
RoleName = Literal["trader", "admin"]
CandleInterval = Literal["1m", "5m", "15m", "1h", "4h", "1d"]

MAX_BATCH = 100


class Request(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies and query strings: unknown fields are a 400."""


class Response(Struct, kw_only=True):
    """Base of response bodies."""


# -- errors -------------------------------------------------------------------------------------------


class ErrorDetail(Response, omit_defaults=True):
    """What went wrong: a stable code, a message, and the one field at fault where there is one."""

    code: Annotated[str, Meta(examples=["INVALID_TICK_SIZE"])]
    message: str
    field: str | None = None
    details: dict[str, Any] | None = None


class ErrorResponse(Response):
    """The one error body of the API."""

    error: ErrorDetail
    request_id: str


# -- orders -------------------------------------------------------------------------------------------


class NewOrder(Request):
    """A new order (API.md "Orders")."""

    symbol: Symbol
    side: SideName
    type: OrderTypeName
    quantity: DecimalText | None = None
    quote_quantity: DecimalText | None = None
    price: DecimalText | None = None
    stop_price: DecimalText | None = None
    time_in_force: TimeInForceName | None = None
    post_only: bool = False
    client_order_id: ClientOrderId | None = None
    self_trade_prevention: SelfTradePreventionName = "EXPIRE_TAKER"


class NewOrderBatch(Request):
    """Up to 100 orders, placed in request order."""

    orders: Annotated[list[NewOrder], Meta(min_length=1, max_length=MAX_BATCH)]


class OrderChange(Request):
    """An amend: a new quantity, a new price, or both."""

    quantity: DecimalText | None = None
    price: DecimalText | None = None


class Order(Response):
    """An order as the API shows it. ``sequence`` is the pair sequence of the order's last change."""

    id: OrderId
    client_order_id: str | None
    symbol: str
    side: SideName
    type: OrderTypeName
    status: OrderStatusName
    price: Amount | None
    stop_price: Amount | None
    quantity: Amount | None
    quote_quantity: Amount | None
    filled_quantity: Amount
    remaining_quantity: Amount | None
    average_price: Amount | None
    time_in_force: TimeInForceName
    post_only: bool
    self_trade_prevention: SelfTradePreventionName
    reject_reason: str | None
    created_at: Timestamp
    updated_at: Timestamp
    sequence: int


class Trade(Response):
    """A trade between two orders (fees: the buyer's in base, the seller's in quote)."""

    id: str
    symbol: str
    price: Amount
    quantity: Amount
    quote_quantity: Amount
    buyer_order_id: OrderId
    seller_order_id: OrderId
    taker_side: SideName
    buyer_fee: Amount
    seller_fee: Amount
    executed_at: Timestamp
    sequence: int


class UserTrade(Trade):
    """A trade as one of its parties sees it."""

    order_id: OrderId
    side: SideName
    role: Literal["MAKER", "TAKER"]
    fee: Amount
    fee_asset: str


class OrderResult(Response):
    """An order and the trades it made in the same command."""

    order: Order
    trades: list[Trade]


class BatchItem(Response, omit_defaults=True):
    """One result of a batch: ``order`` and ``trades``, or ``error`` (the one error shape's inner part)."""

    order: Order | None = None
    trades: list[Trade] | None = None
    error: ErrorDetail | None = None


class BatchResult(Response):
    """The results of a batch in request order."""

    results: list[BatchItem]


class OrderPage(Response):
    """A page of orders, newest first; ``next_cursor`` fetches the next page (null: no more)."""

    orders: list[Order]
    next_cursor: str | None


class CancelledOrders(Response):
    """The orders cancel-all cancelled."""

    cancelled: list[Order]


class OrderQuery(Request):
    """Filters of ``GET /api/v1/orders``; ``status`` is a comma-separated list."""

    symbol: Symbol | None = None
    status: Annotated[str, Meta(examples=["OPEN,PARTIALLY_FILLED"])] | None = None
    side: SideName | None = None
    limit: Annotated[int, Meta(ge=1, le=500)] = 50
    cursor: str | None = None


class CancelAllQuery(Request):
    """``DELETE /api/v1/orders``: one pair, or every pair without ``symbol``."""

    symbol: Symbol | None = None


# -- trades and balances --------------------------------------------------------------------------------


class TradeQuery(Request):
    """Filters of ``GET /api/v1/trades``."""

    symbol: Symbol | None = None
    limit: Annotated[int, Meta(ge=1, le=500)] = 50
    cursor: str | None = None


class UserTradePage(Response):
    """A page of the caller's trades, newest first."""

    trades: list[UserTrade]
    next_cursor: str | None


class Balance(Response):
    """One asset of a user: what is free to use and what open orders hold."""

    asset: str
    available: Amount
    locked: Amount


class Balances(Response):
    """The caller's balances."""

    balances: list[Balance]


# -- market data --------------------------------------------------------------------------------------


class Pair(Response):
    """A trading pair and its rules."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Amount
    lot_size: Amount
    min_quantity: Amount
    max_quantity: Amount
    min_notional: Amount
    maker_fee: Amount
    taker_fee: Amount
    status: PairStatusName


class Pairs(Response):
    """Every pair."""

    pairs: list[Pair]


class BookLevel(Response):
    """One aggregated price level."""

    price: Amount
    quantity: Amount
    orders: int


class OrderBook(Response):
    """Aggregated depth, best first, as of the pair's ``sequence``."""

    symbol: str
    sequence: int
    bids: list[BookLevel]
    asks: list[BookLevel]
    timestamp: Timestamp


class DepthQuery(Request):
    """How many levels per side."""

    depth: Annotated[int, Meta(ge=1, le=500)] = 50


class Ticker(Response):
    """Best prices now and the last 24 hours of trading (null where there is no data)."""

    symbol: str
    last_price: Amount | None
    best_bid: Amount | None
    best_bid_quantity: Amount | None
    best_ask: Amount | None
    best_ask_quantity: Amount | None
    open_24h: Amount | None
    high_24h: Amount | None
    low_24h: Amount | None
    volume_24h: Amount
    quote_volume_24h: Amount
    trades_24h: int
    timestamp: Timestamp


class PublicTrade(Response):
    """A trade as the market sees it."""

    id: str
    price: Amount
    quantity: Amount
    taker_side: SideName
    executed_at: Timestamp


class PublicTrades(Response):
    """Recent trades, newest first."""

    trades: list[PublicTrade]


class PublicTradeQuery(Request):
    """How many recent trades."""

    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class Candle(Response):
    """Open, high, low, close and volumes of one interval that had trades."""

    open_time: Timestamp
    open: Amount
    high: Amount
    low: Amount
    close: Amount
    volume: Amount
    quote_volume: Amount
    trades: int


class Candles(Response):
    """Candles in ascending ``open_time``."""

    candles: list[Candle]


class CandleQuery(Request):
    """The interval and window of candles; ``start``/``end`` are RFC 3339 or unix seconds."""

    interval: CandleInterval = "1m"
    start: str | None = None
    end: str | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_CANDLE_LIMIT)] = DEFAULT_CANDLE_LIMIT


# -- admin --------------------------------------------------------------------------------------------


class NewUser(Request):
    """A user to create."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=USER_NAME_PATTERN, examples=["alice"])]
    role: RoleName = "trader"


class User(Response):
    """A user: a trader, an admin, or one of the exchange's own accounts (``system``: the fee account,
    id 1, which holds no keys)."""

    id: UserId
    name: str
    role: Literal["trader", "admin", "system"]
    created_at: Timestamp


class CreatedUser(Response):
    """A new user and its API key (shown only this once)."""

    user: User
    api_key: str


class UserQuery(Request):
    """Filters of ``GET /api/v1/admin/users``: one user by name, or a page in id order."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=USER_NAME_PATTERN)] | None = None
    limit: Annotated[int, Meta(ge=1, le=500)] = 100
    cursor: str | None = None


class UserPage(Response):
    """A page of users in id order; ``next_cursor`` reads the next page (null: this is the last)."""

    users: list[User]
    next_cursor: str | None


class ApiKey(Response):
    """An API key without its secret: ``prefix`` is the key's first 10 characters, to tell keys apart;
    a revoked key authenticates nobody, ever again."""

    id: Annotated[str, Meta(description="opaque key id", examples=["7"])]
    user_id: UserId
    prefix: Annotated[str, Meta(examples=["te_Xq3v9aB"])]
    created_at: Timestamp
    revoked_at: Timestamp | None


class ApiKeys(Response):
    """A user's keys, revoked ones included, oldest first."""

    keys: list[ApiKey]


class IssuedKey(Response):
    """A new API key: the key itself is shown only in this answer."""

    key: ApiKey
    api_key: str


class Transfer(Request):
    """A deposit or a withdrawal."""

    asset: AssetCode
    amount: DecimalText


class UserBalance(Response):
    """One user's balance of one asset after a transfer."""

    user_id: UserId
    asset: str
    available: Amount
    locked: Amount


class NewPair(Request):
    """A pair to add; it trades at once (unless added HALTED). Sizes, limits and fees have at most 8
    decimal places; ``min_quantity`` defaults to ``lot_size``, ``min_notional`` to 0."""

    symbol: Symbol
    base_asset: AssetCode
    quote_asset: AssetCode
    tick_size: DecimalText
    lot_size: DecimalText
    max_quantity: DecimalText
    min_quantity: DecimalText | None = None
    min_notional: DecimalText | None = None
    maker_fee: DecimalText = "0"
    taker_fee: DecimalText = "0"
    status: PairStatusName = "ACTIVE"


class PairChange(Request):
    """Halt or resume a pair, or change its fees."""

    status: PairStatusName | None = None
    maker_fee: DecimalText | None = None
    taker_fee: DecimalText | None = None


class ActorFailure(Response):
    """The last failure of an actor."""

    type: Annotated[str, Meta(description="the exception's type")]
    message: str
    at: Timestamp
    incarnation: int


class ActorState(Response):
    """A pair's actor as the supervisor sees it."""

    state: Literal["running", "restarting", "stopped", "failed"]
    incarnation: int
    restarts: int
    mailbox: int
    last_failure: ActorFailure | None
    open_orders: int | None


class AdminPair(Response):
    """A pair with its actor."""

    symbol: str
    status: PairStatusName
    actor: ActorState


class AdminPairs(Response):
    """Every pair with its actor."""

    pairs: list[AdminPair]


class Actor(Response):
    """One supervised actor."""

    name: str
    group: str | None
    policy: str
    state: Literal["running", "restarting", "stopped", "failed"]
    incarnation: int
    restarts: int
    mailbox: int
    last_failure: ActorFailure | None
    open_orders: int | None  # a pair's live orders (resting and stops); None for other actors, or no answer


class Actors(Response):
    """The supervision tree: the supervisor's children with their states."""

    supervisor: str
    actors: list[Actor]


# -- operations ---------------------------------------------------------------------------------------


class Health(Response):
    """The process is alive."""

    status: Literal["ok"]
    version: str


class Readiness(Response):
    """Whether the process can take orders: every configured dependency but Redis and the broker (reported,
    though orders are taken without them) answers, and so do the writer and wallet actors."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, Any]


def encode(value: Struct) -> bytes:
    """Encode a response Struct as JSON bytes."""
    return _ENCODER.encode(value)


_ENCODER = msgspec.json.Encoder()
