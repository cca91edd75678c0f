"""storage.history on real PostgreSQL: a user's orders and trades, written by the real engine and writer."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import psycopg_pool
import pytest

from tests.storage.read_side import (
    DAVE,
    FrozenClock,
    add_traders,
    commit,
    now_us,
    rendered,
    us_of,
)
from tests.storage.test_rows_scenarios import ALICE, BOB, CAROL, ETH_USDT, FullDay, Scenario
from tradeengine.engine import OrderType, SelfTradePrevention, Side, UnknownSymbol, ValidationError
from tradeengine.storage import create_pool
from tradeengine.storage.history import (
    Page,
    get_order,
    get_order_by_client_id,
    get_orders,
    get_user_trade,
    list_orders,
    list_user_trades,
)
from tradeengine.storage.rows import OrderRow, build_rows

D = Decimal
DAY_US = 86_400 * 10**6
NONE = SelfTradePrevention.NONE


@pytest.fixture
def pool(pg_pool: psycopg_pool.ConnectionPool) -> psycopg_pool.ConnectionPool:
    add_traders(pg_pool)
    return pg_pool


def every_page(read: Callable[..., Page[Any]], limit: int) -> list[Page[Any]]:
    """Follow next_cursor from the first page to the last."""
    pages = [read(limit=limit, cursor=None)]
    while pages[-1].next_cursor is not None:
        pages.append(read(limit=limit, cursor=pages[-1].next_cursor))
        assert len(pages) < 100
    return pages


def ids(rows: list[Any]) -> list[Any]:
    return [row.id for row in rows]


def newest_first(rows: list[OrderRow]) -> list[int]:
    return [row.id for row in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)]


# -- orders ---------------------------------------------------------------------------------------------


def test_a_stored_order_reads_back_equal_to_the_order_row_the_writer_built(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    day = FullDay()
    # Commit command by command, so most orders are inserted and then updated by later batches.
    for fact in day.facts:
        commit(pool, [fact])
    final = build_rows(day.facts).orders  # every order in its final state
    assert len(final) == 5
    for expected in final:
        stored = get_order(pool, expected.user_id, expected.id)
        assert stored == expected
        assert rendered(stored) == rendered(expected)
        assert stored.created_at.tzinfo is UTC and stored.updated_at.tzinfo is UTC
    assert get_order_by_client_id(pool, ALICE, "nope") is None


def test_timestamps_come_back_in_utc_whatever_the_database_time_zone(
    migrated_pg_url: str, pg_pool: psycopg_pool.ConnectionPool,
) -> None:
    add_traders(pg_pool)
    s = Scenario()
    s.place(BOB, Side.SELL, "0.5", "50000")
    s.place(ALICE, Side.BUY, "0.5", "50000")
    rows = commit(pg_pool, s.facts)
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        database = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{database}" SET timezone TO \'America/New_York\'')
    other_zone_pool = create_pool(migrated_pg_url, min_size=1, max_size=1)
    try:
        with other_zone_pool.connection() as conn:
            assert conn.info.parameter_status("TimeZone") == "America/New_York"
        order = rows.orders[0]
        stored = get_order(other_zone_pool, order.user_id, order.id)
        assert stored is not None and rendered(stored) == rendered(order)
        [view] = get_user_trade(other_zone_pool, ALICE, rows.trades[0].id)
        assert view.executed_at.tzinfo is UTC and rendered(view.trade) == rendered(rows.trades[0])
    finally:
        other_zone_pool.close()


def test_orders_are_listed_newest_first_and_pages_join_without_gaps_across_timestamp_ties(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    s = FrozenClock(start_us=now_us() - 3 * DAY_US)
    for minute in range(4):
        s.at(s.now + 60 * 10**6)
        for _ in range(3 if minute != 2 else 5):  # orders created in the same microsecond
            s.place(ALICE, Side.BUY, "0.01", "40000")
    rows = commit(pool, s.facts).orders
    assert len({row.created_at for row in rows}) == 4
    expected = newest_first(rows)

    for limit in (1, 2, 3, 5, 14, 500):
        pages = every_page(lambda **kw: list_orders(pool, ALICE, **kw), limit)
        assert [o.id for page in pages for o in page.items] == expected, limit
        assert all(len(page.items) == limit for page in pages[:-1])
        assert 0 < len(pages[-1].items) <= limit  # never a cursor that leads to an empty page
    assert list_orders(pool, ALICE, limit=14).next_cursor is None


def test_orders_of_every_age_are_listed_in_order_across_the_time_windows(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    now = now_us()
    s = FrozenClock(start_us=now - 600 * DAY_US)
    # Exactly on and around the window edges seen from now and from a cursor (31 and 366 days).
    for age_days in (600, 400, 366, 365, 60, 32, 31, 30, 2, 1, 0):
        for offset in (-1, 0, 1) if age_days else (0,):
            s.at(max(s.now, now - age_days * DAY_US + offset))
            s.place(BOB, Side.SELL, "0.01", "60000")
    rows = commit(pool, s.facts).orders
    for limit in (1, 4, 500):
        pages = every_page(lambda **kw: list_orders(pool, BOB, **kw), limit)
        assert [o.id for page in pages for o in page.items] == newest_first(rows)


def test_orders_are_filtered_by_symbol_status_and_side(pool: psycopg_pool.ConnectionPool) -> None:
    btc = Scenario()
    resting_buy, _ = btc.place(ALICE, Side.BUY, "0.1", "40000")
    resting_sell, _ = btc.place(ALICE, Side.SELL, "0.2", "70000")
    cancelled, _ = btc.place(ALICE, Side.BUY, "0.1", "41000")
    btc.cancel(cancelled, ALICE)
    stop, _ = btc.place(ALICE, Side.SELL, "0.1", None, OrderType.STOP_MARKET,
                        stop_price=btc.spec.price_to_ticks(D(30000)))
    eth = Scenario(ETH_USDT, start_us=btc.now + 10**6)
    eth_open, _ = eth.place(ALICE, Side.BUY, "1", "3000")
    partial, _ = eth.place(ALICE, Side.SELL, "2", "3100")
    eth.place(BOB, Side.BUY, "0.5", "3100")
    commit(pool, btc.facts + eth.facts)

    def listed(**filters: Any) -> list[str]:
        return [str(o.id) for o in list_orders(pool, ALICE, **filters).items]

    assert listed() == [partial, eth_open, stop, cancelled, resting_sell, resting_buy]
    assert listed(symbol="BTC-USDT") == [stop, cancelled, resting_sell, resting_buy]
    assert listed(statuses=["OPEN", "PARTIALLY_FILLED"]) == [partial, eth_open, resting_sell, resting_buy]
    assert listed(statuses=("PARTIALLY_FILLED",)) == [partial]
    assert listed(statuses={"CANCELLED", "PENDING_TRIGGER"}) == [stop, cancelled]
    assert listed(statuses="FILLED") == []
    assert listed(side="SELL") == [partial, stop, resting_sell]
    assert listed(symbol="ETH-USDT", statuses=["OPEN"], side="BUY") == [eth_open]
    assert listed(symbol="SOL-USDT") == []
    with pytest.raises(UnknownSymbol) as unknown:
        list_orders(pool, ALICE, symbol="NOPE-USDT")
    assert unknown.value.field == "symbol"
    # The same filters page the same way.
    pages = every_page(lambda **kw: list_orders(pool, ALICE, statuses=["OPEN", "PARTIALLY_FILLED"], **kw), 1)
    assert [str(p.items[0].id) for p in pages] == [partial, eth_open, resting_sell, resting_buy]


def test_a_user_never_sees_another_users_orders(pool: psycopg_pool.ConnectionPool) -> None:
    s = Scenario()
    alice_order, _ = s.place(ALICE, Side.BUY, "0.1", "40000", client_order_id="shared-name")
    bob_order, _ = s.place(BOB, Side.BUY, "0.1", "40000", client_order_id="shared-name")
    commit(pool, s.facts)
    alice, bob = int(alice_order), int(bob_order)

    assert ids(list_orders(pool, ALICE).items) == [alice]
    assert ids(list_orders(pool, BOB).items) == [bob]
    assert list_orders(pool, CAROL) == Page([], None)
    assert get_order(pool, BOB, alice) is None and get_order(pool, CAROL, bob) is None
    assert get_order(pool, ALICE, alice) is not None
    alice_by_client = get_order_by_client_id(pool, ALICE, "shared-name")
    bob_by_client = get_order_by_client_id(pool, BOB, "shared-name")
    assert alice_by_client is not None and alice_by_client.id == alice
    assert bob_by_client is not None and bob_by_client.id == bob
    assert get_order_by_client_id(pool, CAROL, "shared-name") is None
    # A cursor is a position, not a key to someone else's orders.
    s.place(ALICE, Side.BUY, "0.1", "40000")
    commit(pool, s.facts[-1:])
    cursor = list_orders(pool, ALICE, limit=1).next_cursor
    assert cursor is not None
    assert ids(list_orders(pool, ALICE, cursor=cursor).items) == [alice]
    assert ids(list_orders(pool, BOB, cursor=cursor).items) == [bob]  # still only BOB's own


def test_several_orders_are_read_at_once_in_the_order_asked_and_only_the_users_own(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    s = Scenario()
    first, _ = s.place(ALICE, Side.BUY, "0.1", "40000")
    bobs, _ = s.place(BOB, Side.BUY, "0.1", "40000")
    s.now += 40 * DAY_US  # another month partition
    second, _ = s.place(ALICE, Side.SELL, "0.1", "60000")
    s.cancel(first, ALICE)
    written = {row.id: row for row in commit(pool, s.facts).orders}
    asked = [int(second), int(bobs), 987654321, int(first), int(second), 0, -1, 2**63]
    got = get_orders(pool, ALICE, asked)
    assert got == [written[int(second)], written[int(first)]]
    assert got[1].status == "CANCELLED"
    assert get_orders(pool, ALICE, []) == [] and get_orders(pool, CAROL, asked) == []


@pytest.mark.parametrize("order_id", [0, -5, 2**63, 123456789])
def test_an_unknown_or_impossible_order_id_is_simply_not_found(
    pool: psycopg_pool.ConnectionPool, order_id: int,
) -> None:
    assert get_order(pool, ALICE, order_id) is None


def test_the_order_found_by_client_id_is_the_first_that_carried_it(pool: psycopg_pool.ConnectionPool) -> None:
    s = Scenario()
    first, _ = s.place(ALICE, Side.BUY, "0.1", "40000", client_order_id="again")
    s.place(ALICE, Side.BUY, "0.2", "40000", client_order_id="again")  # a duplicate the writer tolerates
    s.cancel(first, ALICE)
    rows = commit(pool, s.facts)
    found = get_order_by_client_id(pool, ALICE, "again")
    assert found == next(r for r in rows.orders if r.id == int(first))
    assert found is not None and found.status == "CANCELLED"


# -- arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 501, -1, True, 2.0, "5", None])
def test_a_page_size_outside_1_to_500_is_refused_for_the_limit_field(
    pool: psycopg_pool.ConnectionPool, limit: Any,
) -> None:
    for read in (list_orders, list_user_trades):
        with pytest.raises(ValidationError) as error:
            read(pool, ALICE, limit=limit)
        assert error.value.field == "limit"


def test_unknown_statuses_and_sides_are_refused_for_their_fields(pool: psycopg_pool.ConnectionPool) -> None:
    for statuses in (["OPEN", "open"], ["NEW"], [], ["OPEN'); DROP TABLE orders; --"]):
        with pytest.raises(ValidationError) as error:
            list_orders(pool, ALICE, statuses=statuses)
        assert error.value.field == "status"
    with pytest.raises(ValidationError) as error:
        list_orders(pool, ALICE, side="buy")
    assert error.value.field == "side"


def _tampered(cursor: str) -> list[str]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    flipped = [raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1:] for i in (0, len(raw) // 2, len(raw) - 1)]
    payload = raw.decode().rsplit(".", 1)[0]
    forged = payload.replace(payload.split(".")[1], "1", 1) + "." + raw.decode().rsplit(".", 1)[1]
    return [base64.urlsafe_b64encode(b).decode().rstrip("=") for b in [*flipped, forged.encode()]]


def test_a_malformed_or_tampered_cursor_is_refused_for_the_cursor_field(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    s = Scenario()
    for _ in range(3):
        s.place(ALICE, Side.BUY, "0.1", "40000")
    s.place(BOB, Side.SELL, "0.2", "40000")
    commit(pool, s.facts)
    order_cursor = list_orders(pool, ALICE, limit=1).next_cursor
    trade_cursor = list_user_trades(pool, BOB, limit=1).next_cursor
    assert order_cursor is not None and trade_cursor is not None
    assert len(list_orders(pool, ALICE, limit=1, cursor=order_cursor).items) == 1
    assert len(list_user_trades(pool, BOB, limit=1, cursor=trade_cursor).items) == 1

    bad = ["", "x", "!!!!", "a" * 300, "bm90IGEgY3Vyc29y", order_cursor + "A", order_cursor[:-2],
           *_tampered(order_cursor), 12345, trade_cursor]  # the last: a cursor of the other list
    for cursor in bad:
        with pytest.raises(ValidationError) as error:
            list_orders(pool, ALICE, cursor=cursor)
        assert error.value.field == "cursor", cursor
    for cursor in [*_tampered(trade_cursor), trade_cursor[1:], order_cursor]:
        with pytest.raises(ValidationError) as error:
            list_user_trades(pool, BOB, cursor=cursor)
        assert error.value.field == "cursor", cursor


# -- trades ---------------------------------------------------------------------------------------------


def sweep(s: Scenario, makers: int) -> tuple[list[str], str]:
    """`makers` resting sells (BOB, CAROL alternating) swept by one ALICE buy: one command, many trades."""
    sells = [s.place(BOB if i % 2 == 0 else CAROL, Side.SELL, "0.01", str(50000 + i))[0]
             for i in range(makers)]
    buy, _ = s.place(ALICE, Side.BUY, str(D("0.01") * makers), str(50000 + makers))
    return sells, buy


def test_trades_of_one_command_are_listed_newest_first_by_sequence_not_by_id_text(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    s = Scenario(sequence=70)  # the sweep's trades get sequences 97 to 108
    sweep(s, 12)
    trades = commit(pool, s.facts).trades
    assert len(trades) == 12 and len({t.executed_at for t in trades}) == 1
    assert min(t.sequence for t in trades) < 100 <= max(t.sequence for t in trades)
    expected = [t.id for t in sorted(trades, key=lambda t: t.sequence, reverse=True)]
    assert expected != sorted(expected, reverse=True)  # the text order of the ids would be wrong

    for limit in (1, 5, 12, 50):
        pages = every_page(lambda **kw: list_user_trades(pool, ALICE, **kw), limit)
        assert [t.id for page in pages for t in page.items] == expected
        assert 0 < len(pages[-1].items) <= limit
    bob = [t.id for t in sorted(trades, key=lambda t: t.sequence, reverse=True) if t.seller_user_id == BOB]
    assert len(bob) == 6 and [t.id for t in list_user_trades(pool, BOB).items] == bob


def test_each_party_sees_its_side_role_fee_and_fee_asset(pool: psycopg_pool.ConnectionPool) -> None:
    s = Scenario()
    maker_sell, _ = s.place(BOB, Side.SELL, "0.5", "50000")
    taker_buy, _ = s.place(ALICE, Side.BUY, "0.2", "50000")
    maker_buy, _ = s.place(CAROL, Side.BUY, "0.1", "49000")
    taker_sell, _ = s.place(DAVE, Side.SELL, "0.1", "49000")
    first, second = commit(pool, s.facts).trades

    [alice] = list_user_trades(pool, ALICE).items
    assert alice.trade == first
    assert (alice.order_id, alice.side, alice.role, alice.fee, alice.fee_asset) == (
        int(taker_buy), "BUY", "TAKER", D("0.0002"), "BTC")  # taker fee 0.1 % of 0.2 BTC
    [bob] = list_user_trades(pool, BOB).items
    assert (bob.order_id, bob.side, bob.role, bob.fee, bob.fee_asset) == (
        int(maker_sell), "SELL", "MAKER", D(8), "USDT")  # maker fee 0.08 % of 10000 USDT
    [carol] = list_user_trades(pool, CAROL).items
    assert (carol.trade, carol.order_id, carol.side, carol.role, carol.fee_asset) == (
        second, int(maker_buy), "BUY", "MAKER", "BTC")
    [dave] = list_user_trades(pool, DAVE).items
    assert (dave.order_id, dave.side, dave.role, dave.fee, dave.fee_asset) == (
        int(taker_sell), "SELL", "TAKER", D("4.9"), "USDT")
    assert get_user_trade(pool, DAVE, second.id) == [dave]
    assert rendered(dave.trade) == rendered(second)


def test_a_self_trade_is_two_views_that_paginate_deterministically(pool: psycopg_pool.ConnectionPool) -> None:
    s = Scenario()
    s.place(BOB, Side.SELL, "0.1", "50000")
    sell, _ = s.place(ALICE, Side.SELL, "0.1", "50001", self_trade_prevention=NONE)
    buy, _ = s.place(ALICE, Side.BUY, "0.2", "50001", self_trade_prevention=NONE)  # takes BOB's, then her own
    rows = commit(pool, s.facts)
    with_bob, self_trade = sorted(rows.trades, key=lambda t: t.sequence)
    assert (self_trade.buyer_user_id, self_trade.seller_user_id) == (ALICE, ALICE)

    views = get_user_trade(pool, ALICE, self_trade.id)
    assert [(v.side, v.role, v.order_id, v.fee_asset) for v in views] == [
        ("BUY", "TAKER", int(buy), "BTC"), ("SELL", "MAKER", int(sell), "USDT")]
    assert views[0].fee == self_trade.buyer_fee and views[1].fee == self_trade.seller_fee
    assert all(v.trade == self_trade for v in views)

    expected = [(self_trade.id, "BUY"), (self_trade.id, "SELL"), (with_bob.id, "BUY")]
    for limit in (1, 2, 3, 4):
        pages = every_page(lambda **kw: list_user_trades(pool, ALICE, **kw), limit)
        assert [(t.id, t.side) for page in pages for t in page.items] == expected, limit
    assert [len(p.items) for p in every_page(lambda **kw: list_user_trades(pool, ALICE, **kw), 2)] == [2, 1]


def test_a_user_never_sees_trades_they_were_not_party_to(pool: psycopg_pool.ConnectionPool) -> None:
    s = Scenario()
    s.place(BOB, Side.SELL, "0.1", "50000")
    s.place(ALICE, Side.BUY, "0.1", "50000")
    [trade] = commit(pool, s.facts).trades
    assert list_user_trades(pool, CAROL) == Page([], None)
    assert get_user_trade(pool, CAROL, trade.id) == []
    assert [v.side for v in get_user_trade(pool, BOB, trade.id)] == ["SELL"]
    for missing in ("BTC-USDT:999", "ETH-USDT:1", "btc-usdt:1", "BTC-USDT", "BTC-USDT:-1", "", "x" * 100):
        assert get_user_trade(pool, ALICE, missing) == []


def test_trades_are_filtered_by_symbol(pool: psycopg_pool.ConnectionPool) -> None:
    btc = Scenario()
    btc.place(BOB, Side.SELL, "0.1", "50000")
    btc.place(ALICE, Side.BUY, "0.1", "50000")
    eth = Scenario(ETH_USDT, start_us=btc.now + 1000)
    eth.place(ALICE, Side.SELL, "1", "3000")
    eth.place(BOB, Side.BUY, "1", "3000")
    btc_trade, eth_trade = commit(pool, btc.facts + eth.facts).trades
    assert [t.id for t in list_user_trades(pool, ALICE).items] == [eth_trade.id, btc_trade.id]
    assert [t.id for t in list_user_trades(pool, ALICE, symbol="BTC-USDT").items] == [btc_trade.id]
    [eth_view] = list_user_trades(pool, ALICE, symbol="ETH-USDT").items
    assert (eth_view.side, eth_view.fee_asset) == ("SELL", "USDT")
    assert list_user_trades(pool, ALICE, symbol="SOL-USDT").items == []
    with pytest.raises(UnknownSymbol):
        list_user_trades(pool, ALICE, symbol="NOPE-USDT")


def test_trades_at_the_same_instant_on_two_pairs_are_ordered_by_symbol_then_sequence(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    start = now_us() - DAY_US
    btc, eth = FrozenClock(start_us=start), FrozenClock(ETH_USDT, start_us=start)
    eth.ids = btc.ids  # one id generator for both pairs, as in the engine: distinct ids in one instant
    for s in (btc, eth):
        s.place(BOB, Side.SELL, str(s.spec.lot_size * 1000), "3000")
        s.place(BOB, Side.SELL, str(s.spec.lot_size * 1000), "3001")
        s.place(ALICE, Side.BUY, str(s.spec.lot_size * 2000), "3001")
    trades = commit(pool, btc.facts + eth.facts).trades
    assert len({t.executed_at for t in trades}) == 1
    expected = [t.id for t in sorted(trades, key=lambda t: (t.symbol, t.sequence), reverse=True)]
    assert expected[0].startswith("ETH-USDT")
    for limit in (1, 3):
        pages = every_page(lambda **kw: list_user_trades(pool, ALICE, **kw), limit)
        assert [t.id for page in pages for t in page.items] == expected


def test_trades_of_every_age_are_listed_and_found_across_the_time_windows(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    now = now_us()
    s = FrozenClock(start_us=now - 600 * DAY_US)
    # Around the window edges (1, 7, 30, 365 days) seen from now and from the first trade as a cursor.
    ages = [600, 400, 366, 365, 200, 31, 30, 29, 8, 7, 6, 2, 1, 0]
    for age_days in ages:
        s.at(max(s.now, now - age_days * DAY_US))
        s.place(BOB, Side.SELL, "0.01", "50000", self_trade_prevention=NONE)
        s.place(ALICE if age_days % 2 else BOB, Side.BUY, "0.01", "50000", self_trade_prevention=NONE)
    trades = commit(pool, s.facts).trades
    views = [(t.id, side) for t in sorted(trades, key=lambda t: t.executed_at, reverse=True)
             for side, party in (("BUY", t.buyer_user_id), ("SELL", t.seller_user_id)) if party == BOB]
    assert len(views) == len(ages) + sum(1 for a in ages if a % 2 == 0)  # self-trades on even ages
    for limit in (1, 3, 500):
        pages = every_page(lambda **kw: list_user_trades(pool, BOB, **kw), limit)
        assert [(t.id, t.side) for page in pages for t in page.items] == views
    for t in trades:
        assert {v.side for v in get_user_trade(pool, BOB, t.id)} >= {"SELL"}
    oldest = min(trades, key=lambda t: t.executed_at)
    assert oldest.executed_at < datetime.now(UTC) - timedelta(days=599)


@pytest.mark.parametrize("listing", ["orders", "trades"])
def test_a_cursor_exactly_on_a_window_edge_loses_and_repeats_nothing(
    pool: psycopg_pool.ConnectionPool, listing: str,
) -> None:
    # The cursor's instant anchors the windows: rows exactly one window span before it (orders: 31 and
    # 366 days; trades: 1, 7, 30 and 365 days), and one microsecond either side, each come exactly once.
    anchor = now_us() - DAY_US
    spans = (31, 366) if listing == "orders" else (1, 7, 30, 365)
    offsets = sorted({days * DAY_US + delta for days in spans for delta in (-1, 0, 1)}, reverse=True)
    s = FrozenClock(start_us=anchor - offsets[0])
    for offset in [*offsets, 0]:
        s.at(anchor - offset)
        s.place(BOB, Side.SELL, "0.01", "50000")
        s.place(ALICE, Side.BUY, "0.01", "50000")
    commit(pool, s.facts)
    read = list_orders if listing == "orders" else list_user_trades

    def instant(row: Any) -> int:
        return us_of(row.created_at if listing == "orders" else row.executed_at)

    first_page = read(pool, ALICE, limit=1)
    assert [instant(r) for r in first_page.items] == [anchor]
    rest = read(pool, ALICE, limit=500, cursor=first_page.next_cursor)
    assert [instant(r) for r in rest.items] == [anchor - o for o in sorted(offsets)]
    assert rest.next_cursor is None
