"""The public market-data routes of API.md, through the app on real actors and PostgreSQL, without a key.

The candle and ticker figures come from a known trade series: the engine runs on a clock the test sets,
so every trade's executed_at is known to the microsecond (and the series lies in the last 24 hours,
apart from one older trade that the 24 h figures must leave out).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.actors.system_harness import database_pool
from tests.http.api_harness import ApiHarness, Trader, api_harness, error_of
from tradeengine.storage import apply_migrations

ORDERS = "/api/v1/orders"
TIMESTAMP_LENGTH = len("2026-11-24T10:00:00.123456Z")



def place(api: ApiHarness, user: Trader, **order: Any) -> dict[str, Any]:
    response = api.post(ORDERS, user, json={"symbol": "BTC-USDT", "type": "LIMIT", **order})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json
    return result


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def assert_recent_timestamp(text: str) -> None:
    assert len(text) == TIMESTAMP_LENGTH and text.endswith("Z")
    moment = datetime.fromisoformat(text)
    assert abs(datetime.now(UTC) - moment) < timedelta(seconds=30)


class Clock:
    """The engine's clock (µs since the epoch), set by the test."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> int:
        return (self.now - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC))


@pytest.fixture
def timed_api(machine_pg_url: str, clock: Clock) -> Iterator[ApiHarness]:
    """The API on an engine whose clock the test sets."""
    apply_migrations(machine_pg_url)
    with database_pool(machine_pg_url) as pool, api_harness(pool, clock_us=clock) as harness:
        yield harness


BTC_USDT = {
    "symbol": "BTC-USDT", "base_asset": "BTC", "quote_asset": "USDT", "tick_size": "0.01",
    "lot_size": "0.00001", "min_quantity": "0.00001", "max_quantity": "9000", "min_notional": "10",
    "maker_fee": "0.0008", "taker_fee": "0.001", "status": "ACTIVE",
}


# -- pairs ----------------------------------------------------------------------------------------------


def test_pairs_are_public_and_show_every_rule_of_each_pair(api: ApiHarness) -> None:
    response = api.get("/api/v1/pairs")
    assert response.status_code == 200
    pairs = response.json["pairs"]
    assert [p["symbol"] for p in pairs] == sorted([
        "BTC-USDT", "ETH-USDT", "BNB-USDT", "SOL-USDT", "XRP-USDT", "ADA-USDT", "DOGE-USDT", "LINK-USDT",
        "MATIC-USDT", "USDC-USDT"])
    assert pairs[[p["symbol"] for p in pairs].index("BTC-USDT")] == BTC_USDT
    assert api.get("/api/v1/pairs/BTC-USDT").json == BTC_USDT
    assert api.get("/api/v1/pairs/USDC-USDT").json["maker_fee"] == "0"


def test_an_unknown_symbol_is_unknown_on_every_market_route(api: ApiHarness) -> None:
    for symbol in ("NOPE-USDT", "btc-usdt", "BTC-USDT%00"):
        for path in ("/api/v1/pairs/{}", "/api/v1/orderbook/{}", "/api/v1/markets/{}/ticker",
                     "/api/v1/markets/{}/trades", "/api/v1/markets/{}/candles"):
            error = error_of(api.get(path.format(symbol)), 404)
            assert (error["code"], error["field"]) == ("UNKNOWN_SYMBOL", "symbol"), path.format(symbol)


# -- order book -------------------------------------------------------------------------------------------


def test_the_order_book_aggregates_levels_best_first_with_order_counts(api: ApiHarness) -> None:
    alice = api.user(funds={"BTC": "10", "USDT": "1000000"})
    for side, quantity, price in (("BUY", "0.1", "49000"), ("BUY", "0.25", "49000"),
                                  ("BUY", "0.3", "48999.99"), ("SELL", "0.5", "51000"),
                                  ("SELL", "0.0002", "50500.5")):
        place(api, alice, side=side, quantity=quantity, price=price)
    response = api.get("/api/v1/orderbook/BTC-USDT")
    assert response.status_code == 200
    book = response.json
    assert set(book) == {"symbol", "sequence", "bids", "asks", "timestamp"}
    assert book["symbol"] == "BTC-USDT"
    assert book["bids"] == [{"price": "49000", "quantity": "0.35", "orders": 2},
                            {"price": "48999.99", "quantity": "0.3", "orders": 1}]
    assert book["asks"] == [{"price": "50500.5", "quantity": "0.0002", "orders": 1},
                            {"price": "51000", "quantity": "0.5", "orders": 1}]
    assert book["sequence"] == api.system.exchange.top("BTC-USDT").sequence > 0
    assert_recent_timestamp(book["timestamp"])
    shallow = api.get("/api/v1/orderbook/BTC-USDT", params={"depth": "1"}).json
    assert (len(shallow["bids"]), len(shallow["asks"])) == (1, 1)
    assert api.get("/api/v1/orderbook/ETH-USDT").json["bids"] == []


def test_the_order_book_depth_is_1_to_500(api: ApiHarness) -> None:
    for depth in ("0", "501", "many"):
        error = error_of(api.get("/api/v1/orderbook/BTC-USDT", params={"depth": depth}), 400)
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", "depth")
    assert api.get("/api/v1/orderbook/BTC-USDT", params={"depth": "500"}).status_code == 200


# -- ticker, trades and candles from a known series ---------------------------------------------------------


def trade_at(api: ApiHarness, clock: Clock, moment: datetime, seller: Trader, buyer: Trader, quantity: str,
             price: str) -> dict[str, Any]:
    """The seller rests, the buyer takes it, both at `moment`; return the trade."""
    clock.now = moment
    place(api, seller, side="SELL", quantity=quantity, price=price)
    (trade,) = place(api, buyer, side="BUY", quantity=quantity, price=price)["trades"]
    assert trade["executed_at"] == rfc3339(moment)
    return trade  # type: ignore[no-any-return]


@pytest.fixture
def series(timed_api: ApiHarness, clock: Clock) -> dict[str, Any]:
    """Trades of BTC-USDT: one 25 h ago, then four in two minutes and one hour (from the hour t0)."""
    api = timed_api
    t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    alice = api.user(funds={"BTC": "10", "USDT": "1000000"})
    bob = api.user(funds={"BTC": "10", "USDT": "1000000"})
    trades = [
        trade_at(api, clock, t0 - timedelta(hours=25), alice, bob, "1", "40000"),
        trade_at(api, clock, t0 + timedelta(seconds=6), alice, bob, "0.1", "50000"),
        trade_at(api, clock, t0 + timedelta(seconds=21, microseconds=5), alice, bob, "0.2", "50100"),
        trade_at(api, clock, t0 + timedelta(seconds=66), alice, bob, "0.3", "49900"),
        trade_at(api, clock, t0 + timedelta(hours=1, seconds=6), alice, bob, "0.1", "50200"),
    ]
    clock.now = t0 + timedelta(hours=1, minutes=5)
    place(api, alice, side="SELL", quantity="0.5", price="51000")
    place(api, bob, side="BUY", quantity="0.4", price="49000.5")
    clock.now = datetime.now(UTC)
    return {"t0": t0, "trades": trades}


def test_the_ticker_shows_the_best_prices_now_and_exactly_the_last_24_hours(
        timed_api: ApiHarness, series: dict[str, Any]) -> None:
    response = timed_api.get("/api/v1/markets/BTC-USDT/ticker")
    assert response.status_code == 200
    ticker = response.json
    assert_recent_timestamp(ticker.pop("timestamp"))
    # 24 h: 0.1 @ 50000, 0.2 @ 50100, 0.3 @ 49900, 0.1 @ 50200 (the trade 25 h before t0 is left out).
    assert ticker == {
        "symbol": "BTC-USDT", "last_price": "50200", "best_bid": "49000.5", "best_bid_quantity": "0.4",
        "best_ask": "51000", "best_ask_quantity": "0.5", "open_24h": "50000", "high_24h": "50200",
        "low_24h": "49900", "volume_24h": "0.7", "quote_volume_24h": "35010", "trades_24h": 4,
    }


def test_a_pair_without_trades_or_orders_has_a_ticker_of_nulls_and_zeros(api: ApiHarness) -> None:
    ticker = api.get("/api/v1/markets/ETH-USDT/ticker").json
    assert_recent_timestamp(ticker.pop("timestamp"))
    assert ticker == {
        "symbol": "ETH-USDT", "last_price": None, "best_bid": None, "best_bid_quantity": None,
        "best_ask": None, "best_ask_quantity": None, "open_24h": None, "high_24h": None, "low_24h": None,
        "volume_24h": "0", "quote_volume_24h": "0", "trades_24h": 0,
    }


def test_recent_trades_are_newest_first_with_the_public_fields_only(
        timed_api: ApiHarness, series: dict[str, Any]) -> None:
    trades = series["trades"]
    listed = timed_api.get("/api/v1/markets/BTC-USDT/trades").json["trades"]
    assert listed == [{"id": t["id"], "price": t["price"], "quantity": t["quantity"], "taker_side": "BUY",
                       "executed_at": t["executed_at"]} for t in reversed(trades)]
    two = timed_api.get("/api/v1/markets/BTC-USDT/trades", params={"limit": "2"}).json["trades"]
    assert [t["id"] for t in two] == [trades[4]["id"], trades[3]["id"]]
    assert timed_api.get("/api/v1/markets/ETH-USDT/trades").json == {"trades": []}
    for limit in ("0", "1001"):
        error = error_of(timed_api.get("/api/v1/markets/BTC-USDT/trades", params={"limit": limit}), 400)
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", "limit")


def test_candles_are_exact_for_the_series_in_every_requested_window(
        timed_api: ApiHarness, series: dict[str, Any]) -> None:
    t0: datetime = series["t0"]
    path = "/api/v1/markets/BTC-USDT/candles"
    minute = timed_api.get(path, params={"interval": "1m", "start": str(int(t0.timestamp()))}).json
    assert minute == {"candles": [
        {"open_time": rfc3339(t0), "open": "50000", "high": "50100", "low": "50000", "close": "50100",
         "volume": "0.3", "quote_volume": "15020", "trades": 2},
        {"open_time": rfc3339(t0 + timedelta(minutes=1)), "open": "49900", "high": "49900", "low": "49900",
         "close": "49900", "volume": "0.3", "quote_volume": "14970", "trades": 1},
        {"open_time": rfc3339(t0 + timedelta(hours=1)), "open": "50200", "high": "50200", "low": "50200",
         "close": "50200", "volume": "0.1", "quote_volume": "5020", "trades": 1},
    ]}
    hour_start = (t0 - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    hourly = timed_api.get(path, params={"interval": "1h", "start": hour_start}).json["candles"]
    assert hourly == [
        {"open_time": rfc3339(t0), "open": "50000", "high": "50100", "low": "49900", "close": "49900",
         "volume": "0.6", "quote_volume": "29990", "trades": 3},
        {"open_time": rfc3339(t0 + timedelta(hours=1)), "open": "50200", "high": "50200", "low": "50200",
         "close": "50200", "volume": "0.1", "quote_volume": "5020", "trades": 1},
    ]
    # end as RFC 3339 with an offset; without start, the `limit` intervals ending with end's.
    end = (t0 + timedelta(seconds=90)).astimezone(timezone(timedelta(hours=2))).isoformat()
    last_two = timed_api.get(path, params={"interval": "1m", "end": end, "limit": "2"}).json["candles"]
    assert [c["open_time"] for c in last_two] == [rfc3339(t0), rfc3339(t0 + timedelta(minutes=1))]
    one = timed_api.get(path, params={"interval": "1m", "start": rfc3339(t0), "end": rfc3339(t0)}).json
    assert [c["trades"] for c in one["candles"]] == [2]
    # unix seconds; limit counts candles, not intervals: the first candles since 1970 are the series' days.
    epoch = timed_api.get(path, params={"interval": "1d", "start": "0", "limit": "1000"}).json["candles"]
    days = sorted({t["executed_at"][:10] for t in series["trades"]})
    assert [c["open_time"] for c in epoch] == [f"{day}T00:00:00.000000Z" for day in days]


def test_candles_count_candles_so_a_quiet_stretch_hides_none(
        timed_api: ApiHarness, series: dict[str, Any]) -> None:
    """With only start, the first `limit` candles at or after it, however long after; without start, the
    last `limit` candles up to end or now, however long before."""
    t0: datetime = series["t0"]
    path = "/api/v1/markets/BTC-USDT/candles"
    ten_hours_before = rfc3339(t0 - timedelta(hours=10))
    first = timed_api.get(path, params={"interval": "1m", "start": ten_hours_before, "limit": "2"}).json
    assert [c["open_time"] for c in first["candles"]] == [rfc3339(t0), rfc3339(t0 + timedelta(minutes=1))]
    days_before = rfc3339(t0 - timedelta(days=3))
    first = timed_api.get(path, params={"interval": "1m", "start": days_before, "limit": "1"}).json
    assert [c["open_time"] for c in first["candles"]] == [rfc3339(t0 - timedelta(hours=25))]
    latest = timed_api.get(path, params={"interval": "1m", "limit": "1"}).json["candles"]
    assert [c["open_time"] for c in latest] == [rfc3339(t0 + timedelta(hours=1))]
    end = rfc3339(t0 + timedelta(minutes=59))
    before = timed_api.get(path, params={"interval": "1m", "end": end, "limit": "1"}).json["candles"]
    assert [c["open_time"] for c in before] == [rfc3339(t0 + timedelta(minutes=1))]


def test_candle_parameters_are_validated_naming_the_field(api: ApiHarness) -> None:
    path = "/api/v1/markets/BTC-USDT/candles"
    for params, field in (({"interval": "2m"}, "interval"), ({"start": "yesterday"}, "start"),
                          ({"end": "2026-11-24T10:00:00"}, "end"), ({"start": "999999999999"}, "start"),
                          ({"start": "2026-11-24T10:00:00Z", "end": "2026-11-23T10:00:00Z"}, "start"),
                          ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"step": "1"}, "step")):
        error = error_of(api.get(path, params=params), 400)
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field), params
    assert api.get(path).json == {"candles": []}


def test_market_data_needs_no_key_and_ignores_a_bad_one(api: ApiHarness) -> None:
    bad = {"Authorization": "Bearer te_unknown"}
    for path in ("/api/v1/pairs", "/api/v1/orderbook/BTC-USDT", "/api/v1/markets/BTC-USDT/ticker",
                 "/api/v1/markets/BTC-USDT/trades", "/api/v1/markets/BTC-USDT/candles"):
        assert api.get(path).status_code == 200, path
        assert api.get(path, headers=bad).status_code == 200, path


def test_volumes_and_an_orders_filled_quote_past_what_a_balance_holds_are_exact(api: ApiHarness) -> None:
    admin = api.user("admin")
    added = api.post("/api/v1/admin/pairs", admin, json={
        "symbol": "HUG-BIG", "base_asset": "HUG", "quote_asset": "BIG", "tick_size": "1", "lot_size": "1",
        "max_quantity": "1000", "maker_fee": "0", "taker_fee": "0"})
    assert added.status_code == 201, added.text
    price, lower = "6" + "0" * 29, "5" + "0" * 29  # the same coins change hands three times
    x = api.user(funds={"BIG": "9" + "0" * 29})
    y = api.user(funds={"HUG": "10"})

    def place(user: Trader, side: str, quantity: str, at: str) -> dict[str, Any]:
        answer = api.post("/api/v1/orders", user, json={"symbol": "HUG-BIG", "side": side, "type": "LIMIT",
                                                        "quantity": quantity, "price": at})
        assert answer.status_code == 201, answer.text
        order: dict[str, Any] = answer.json["order"]
        return order

    resting = place(y, "SELL", "3", price)
    place(x, "BUY", "1", price)
    place(x, "SELL", "1", lower)
    place(y, "BUY", "1", lower)
    place(x, "BUY", "1", price)
    order = api.get(f"/api/v1/orders/{resting['id']}", y).json
    assert (order["status"], order["filled_quantity"], order["average_price"]) == \
        ("PARTIALLY_FILLED", "2", price)
    [candle] = api.get("/api/v1/markets/HUG-BIG/candles", params={"interval": "1d"}).json["candles"]
    assert (candle["volume"], candle["quote_volume"], candle["trades"]) == ("3", "17" + "0" * 29, 3)
    ticker = api.get("/api/v1/markets/HUG-BIG/ticker").json
    assert (ticker["volume_24h"], ticker["quote_volume_24h"]) == ("3", "17" + "0" * 29)
