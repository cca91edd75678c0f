"""storage.writer.write_batch against real PostgreSQL (the machine's server and the embedded one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.storage.test_rows_scenarios import ALICE, BOB, CAROL, FullDay, Scenario, add_users
from tradeengine.engine import Side, TradeExecuted
from tradeengine.storage import StorageError, StorageUnavailable
from tradeengine.storage.errors import CommitOutcomeUnknown, WriterFenced
from tradeengine.storage.facts import Facts, Transfer
from tradeengine.storage.ids import ID_EPOCH_US
from tradeengine.storage.rows import build_rows
from tradeengine.storage.writer import claim_fence, write_batch

D = Decimal


@pytest.fixture
def conn(migrated_pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(migrated_pg_url) as connection:
        add_users(connection)
        yield connection


def write(conn: psycopg.Connection[Any], facts: list[Facts]) -> None:
    write_batch(conn, build_rows(facts))


def one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    conn.rollback()
    assert row is not None
    return row[0] if len(row) == 1 else row


def all_rows(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[Any]:
    rows = conn.execute(query, params).fetchall()
    conn.rollback()
    return rows


def dump(conn: psycopg.Connection[Any]) -> dict[str, list[Any]]:
    """Everything the writer writes, without the identity columns and commit times."""
    return {
        "orders": all_rows(conn, "SELECT * FROM orders ORDER BY id"),
        "client_order_ids": all_rows(conn, "SELECT * FROM client_order_ids ORDER BY order_id"),
        "trades": all_rows(conn, "SELECT * FROM trades ORDER BY id"),
        "ledger": all_rows(conn, "SELECT user_id, asset, kind, amount, available_delta, locked_delta, "
                                 "order_id, trade_id, created_at FROM ledger_entries ORDER BY id"),
        "balances": all_rows(conn, "SELECT user_id, asset, available, locked FROM balances ORDER BY 1, 2"),
        "outbox": all_rows(conn, "SELECT event_id, symbol, sequence, event_type, routing_key, payload "
                                 "FROM outbox_events ORDER BY symbol NULLS FIRST, message_id, position"),
        "pairs": all_rows(conn, "SELECT symbol, last_sequence, last_price FROM pairs ORDER BY symbol"),
    }


def test_a_day_of_trading_reads_back_orders_trades_ledger_balances_outbox_and_pair_progress(
    conn: psycopg.Connection[Any],
) -> None:
    day = FullDay()
    write(conn, day.facts)

    orders = {str(r[0]): r[1:] for r in all_rows(
        conn, "SELECT id, status::text, filled_quantity, filled_quote / nullif(filled_quantity, 0), price, "
              "priority > sequence FROM orders")}
    assert orders == {
        day.bob_sell: ("PARTIALLY_FILLED", D("0.6"), D("50003.333333333333"), D(50010), True),
        day.alice_buy: ("FILLED", D("0.4"), D(50000), D(50100), False),
        day.carol_stop: ("FILLED", D("0.1"), D(50010), D(50100), True),
        day.carol_rest: ("CANCELLED", D(0), None, D(49000), False),
        day.alice_buy2: ("FILLED", D("0.1"), D(50010), D(50010), False),
    }
    second, third = (e.sequence for e in day.trigger if isinstance(e, TradeExecuted))
    assert all_rows(conn, "SELECT id, price, quantity, buyer_fee, seller_fee, taker_side::text FROM trades "
                          "ORDER BY sequence") == [
        ("BTC-USDT:5", D(50000), D("0.4"), D("0.0004"), D(16), "BUY"),
        (f"BTC-USDT:{second}", D(50010), D("0.1"), D("0.0001"), D("4.0008"), "BUY"),
        (f"BTC-USDT:{third}", D(50010), D("0.1"), D("0.0001"), D("4.0008"), "BUY"),
    ]
    balances = {(u, a): (av, lk) for u, a, av, lk in dump(conn)["balances"]}
    assert balances[(1, "BTC")] == (D("0.0006"), D(0))
    assert balances[(BOB, "BTC")] == (D(9), D("0.4"))  # 1 locked, 0.6 sold
    assert balances[(CAROL, "USDT")] == (D(100000) - D("5001"), D(0))
    for asset, deposited in (("BTC", D(11)), ("USDT", D(200000))):
        assert one(conn, "SELECT sum(available + locked) FROM balances WHERE asset = %s", asset) == deposited
    assert one(conn, "SELECT count(*) FROM ledger_entries WHERE kind = 'DEPOSIT'") == 4
    assert all_rows(conn, "SELECT user_id, asset, sum(available_delta), sum(locked_delta) "
                          "FROM ledger_entries GROUP BY 1, 2 ORDER BY 1, 2") == dump(conn)["balances"]
    assert one(conn, "SELECT count(*) FROM outbox_events WHERE routing_key = 'trade.BTC-USDT'") == 3
    assert one(conn, "SELECT payload->>'average_price' FROM outbox_events WHERE routing_key = "
                     "'order.BTC-USDT.FILLED' AND payload->>'order_id' = %s", day.alice_buy) == "50000"
    assert one(conn, "SELECT count(*) FROM outbox_events WHERE published_at IS NULL") == len(
        build_rows(day.facts).outbox_events)
    assert one(conn, "SELECT (last_sequence, last_price) FROM pairs WHERE symbol = 'BTC-USDT'") == (
        str(day.scenario.engine.sequence), "50010.00000000")


def test_one_batch_per_command_leaves_the_same_database_as_one_batch_for_all(
    conn: psycopg.Connection[Any], migrated_pg_url: str,
) -> None:
    day = FullDay()
    for fact in day.facts:
        write(conn, [fact])
    per_command = dump(conn)
    conn.execute("TRUNCATE orders, trades, ledger_entries, outbox_messages, balances, client_order_ids")
    conn.execute("UPDATE pairs SET last_sequence = 0, last_price = NULL")
    conn.commit()
    write(conn, day.facts)
    assert dump(conn) == per_command


def test_each_order_is_found_in_its_partition_from_its_id_alone(conn: psycopg.Connection[Any]) -> None:
    day = FullDay()
    write(conn, day.facts)
    for order_id in (day.bob_sell, day.alice_buy, day.carol_stop):
        partition = one(conn, "SELECT tableoid::regclass::text FROM orders WHERE id = %s "
                              "AND created_at = snowflake_timestamp(%s)", int(order_id), int(order_id))
        assert partition == "orders_p2026_11"
    assert one(conn, "SELECT count(*) FROM orders WHERE created_at <> snowflake_timestamp(id)") == 0


@pytest.mark.parametrize("moment", [datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC),
                                    datetime(2090, 6, 30, tzinfo=UTC)])
def test_orders_and_trades_far_in_the_past_or_future_land_in_the_default_partitions(
    conn: psycopg.Connection[Any], moment: datetime,
) -> None:
    s = Scenario(start_us=int(moment.timestamp()) * 10**6)
    s.deposit(ALICE, "USDT", "1000")
    s.deposit(BOB, "BTC", "1")
    s.place(BOB, Side.SELL, "0.01", "50000")
    s.place(ALICE, Side.BUY, "0.01", "50000")
    write(conn, s.facts)
    assert set(all_rows(conn, "SELECT tableoid::regclass::text, status::text FROM orders")) == {
        ("orders_default", "FILLED")}
    assert all_rows(conn, "SELECT tableoid::regclass::text FROM trades") == [("trades_default",)]


def test_a_batch_that_would_overdraw_a_balance_fails_whole_and_writes_nothing(
    conn: psycopg.Connection[Any],
) -> None:
    day = FullDay()
    write(conn, day.facts[:4])  # the deposits
    before = dump(conn)
    s = day.scenario
    s.place(BOB, Side.SELL, "1", "50000")
    s.withdraw(ALICE, "USDT", "100000.00000001")
    with pytest.raises(StorageError, match="balances"):
        write(conn, s.facts[4:])
    assert dump(conn) == before


def test_a_duplicate_client_order_id_never_fails_a_batch(conn: psycopg.Connection[Any]) -> None:
    s = Scenario()
    s.deposit(ALICE, "USDT", "10000")
    s.place(ALICE, Side.BUY, "0.1", "40000", client_order_id="same")
    write(conn, s.facts)
    s.place(ALICE, Side.BUY, "0.1", "40000", client_order_id="same")
    write(conn, s.facts[-1:])
    assert one(conn, "SELECT count(*) FROM orders WHERE client_order_id = 'same'") == 2
    assert one(conn, "SELECT count(*) FROM client_order_ids") == 1


# Text the writer renders itself (array literal elements) must read back unchanged, whatever it holds:
# the schema's CHECKs keep today's text columns tame; the rendering does not rely on that.
AWKWARD_TEXTS = ['"quoted"', "back\\slash", "tab\there", "new\nline", "cr\rhere", "a,b", "{braces}", "NULL",
                 "\\N", "'single'", "ünï©ødé €", " padded ", "", "x" * 200]


@pytest.mark.parametrize("texts", [AWKWARD_TEXTS, ["plain", "text"]], ids=["awkward", "plain"])
def test_text_reads_back_exactly_through_array_literals(
    conn: psycopg.Connection[Any], texts: list[str],
) -> None:
    from tradeengine.storage.writer import _Renderer

    rows = [(text, None if i % 3 == 0 else text) for i, text in enumerate(texts)]  # kinds T and t
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM unnest(%s::text[], %s::text[])", _Renderer().arrays(rows, "Tt"))
        assert cur.fetchall() == rows


def test_a_batch_is_one_round_trip_to_the_server(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    s = Scenario()
    s.deposit(ALICE, "USDT", "10000")
    s.deposit(BOB, "BTC", "1")
    write(conn, s.facts)
    resting, _ = s.place(ALICE, Side.BUY, "0.2", "40000")
    write(conn, s.facts[-1:])
    start = len(s.facts)
    s.place(BOB, Side.SELL, "0.1", "40000")  # trades, updates the resting order, moves balances
    s.place(ALICE, Side.BUY, "0.01", "39000", client_order_id="one-trip")
    fence = claim_fence(conn, lock_timeout=5.0)
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as sink:
        conn.pgconn.trace(sink.fileno())
        try:
            write_batch(conn, build_rows(s.facts[start:]), statement_timeout=5.0, fence=fence)
        finally:
            conn.pgconn.untrace()
    # libpq's trace: a line per message, "time<TAB>F|B<TAB>length<TAB>message<TAB>contents".
    messages = [fields[3] for line in trace.read_text().splitlines() if len(fields := line.split("\t")) > 3]
    assert messages.count("Sync") == 1  # everything is sent, then the answers are read: one round trip
    assert messages.count("ReadyForQuery") == 1
    assert one(conn, "SELECT status FROM orders WHERE id = %s", resting) == "PARTIALLY_FILLED"


def test_an_update_of_an_order_the_database_does_not_hold_fails_the_batch(
    conn: psycopg.Connection[Any],
) -> None:
    s = Scenario()
    s.deposit(ALICE, "USDT", "10000")
    write(conn, s.facts)
    order_id, _ = s.place(ALICE, Side.BUY, "0.1", "40000")
    s.cancel(order_id, ALICE)
    with pytest.raises(StorageError, match="disagree"):
        write(conn, s.facts[-1:])
    # Rolled back, and the connection as it was given: idle, not in autocommit.
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not conn.autocommit
    assert one(conn, "SELECT count(*) FROM ledger_entries") == 1


def test_orders_of_earlier_batches_are_updated_in_place(conn: psycopg.Connection[Any]) -> None:
    s = Scenario()
    s.deposit(ALICE, "USDT", "100000")
    order_id, _ = s.place(ALICE, Side.BUY, "1", "40000")
    write(conn, s.facts)
    s.amend(order_id, ALICE, quantity="0.5")
    s.cancel(order_id, ALICE)
    write(conn, s.facts[2:])
    row = one(conn, "SELECT status::text, quantity, price, filled_quantity, priority = sequence, "
                    "updated_sequence FROM orders WHERE id = %s", int(order_id))
    assert row == ("CANCELLED", D("0.5"), D(40000), D(0), True, s.engine.sequence - 1)
    assert one(conn, "SELECT (available, locked) FROM balances WHERE user_id = %s AND asset = 'USDT'",
               ALICE) == ("100000.00000000", "0.00000000")


@pytest.mark.parametrize("prepare_threshold", [None, 0])
def test_batches_work_with_and_without_server_side_prepared_statements(
    migrated_pg_url: str, prepare_threshold: int | None,
) -> None:
    with psycopg.connect(migrated_pg_url, prepare_threshold=prepare_threshold) as conn:
        add_users(conn)
        s = Scenario()
        s.deposit(ALICE, "USDT", "1000000")
        s.deposit(BOB, "BTC", "100")
        write(conn, s.facts)
        for i in range(8):
            s.place(BOB, Side.SELL, "0.1", str(50000 + i))
            s.place(ALICE, Side.BUY, "0.05", str(50000 + i))
            write(conn, s.facts[-2:])
        assert one(conn, "SELECT count(*) FROM trades") == 8
        assert one(conn, "SELECT sum(filled_quantity) FROM orders WHERE side = 'SELL'") == D("0.4")
        assert one(conn, "SELECT count(*) FROM orders WHERE status = 'FILLED'") == 12


def test_a_transfer_only_batch_touches_no_pair(conn: psycopg.Connection[Any]) -> None:
    write(conn, [Transfer("DEPOSIT", ALICE, "ETH", 3 * 10**8, ID_EPOCH_US + 1)])
    assert one(conn, "SELECT available FROM balances WHERE user_id = %s", ALICE) == D(3)
    assert one(conn, "SELECT max(last_sequence) FROM pairs") == 0


@pytest.mark.parametrize("statement_timeout", [None, 5.0])
def test_several_older_orders_are_updated_in_one_batch_with_or_without_a_statement_timeout(
    conn: psycopg.Connection[Any], statement_timeout: float | None,
) -> None:
    # The writer's own call passes a statement timeout: its SET must not count as an updated order.
    s = Scenario()
    s.deposit(ALICE, "USDT", "100000")
    orders = [s.place(ALICE, Side.BUY, "0.1", price)[0] for price in ("40000", "40001", "40002")]
    write_batch(conn, build_rows(s.facts), statement_timeout=statement_timeout)
    done = len(s.facts)
    for order_id in orders:
        s.cancel(order_id, ALICE)
    write_batch(conn, build_rows(s.facts[done:]), statement_timeout=statement_timeout)
    assert all_rows(conn, "SELECT status::text, count(*) FROM orders GROUP BY 1") == [("CANCELLED", 3)]
    more = [s.place(ALICE, Side.BUY, "0.1", price)[0] for price in ("39000", "39001")]
    write_batch(conn, build_rows(s.facts[-2:]), statement_timeout=statement_timeout)
    for order_id in more:
        s.cancel(order_id, ALICE)
    missing = build_rows(s.facts[-2:])
    ghost = missing.order_updates[0]
    missing.order_updates[0] = ghost._replace(id=ghost.id + 1)  # an order the database does not hold
    with pytest.raises(StorageError, match="1 of 2 order updates found no order row"):
        write_batch(conn, missing, statement_timeout=statement_timeout)
    assert one(conn, "SELECT count(*) FROM orders WHERE status = 'CANCELLED'") == 3


def test_each_batch_writes_one_outbox_message_per_pair_whose_events_read_back_in_order(
    conn: psycopg.Connection[Any],
) -> None:
    day = FullDay()
    write(conn, day.facts[:6])  # the deposits, the resting sell and the crossing buy
    write(conn, day.facts[6:])
    messages = all_rows(conn, "SELECT symbol, first_sequence, last_sequence, json_array_length(events), "
                              "published_at FROM outbox_messages ORDER BY id")
    first, second = build_rows(day.facts[:6]).outbox, build_rows(day.facts[6:]).outbox
    assert messages == [(m.symbol, m.first_sequence, m.last_sequence, len(m.events), None)
                        for m in (*first, *second)]
    assert [m[0] for m in messages] == [None, "BTC-USDT", "BTC-USDT"]
    assert messages[1][2] < messages[2][1]  # the rows of one pair never overlap
    events = all_rows(conn, "SELECT event_id, sequence, event_type, routing_key, payload FROM outbox_events "
                            "WHERE symbol = 'BTC-USDT' ORDER BY message_id, position")
    expected = [e for m in (*first, *second) if m.symbol for e in m.events]
    assert events == [(e.event_id, e.sequence, e.event_type, e.routing_key, e.payload) for e in expected]



def test_a_batch_under_a_stale_writer_fence_fails_whole_and_a_claim_increments_the_epoch(
    conn: psycopg.Connection[Any],
) -> None:
    mine = claim_fence(conn, lock_timeout=2.0)
    assert one(conn, "SELECT epoch FROM writer_fence") == mine
    deposit = Transfer("DEPOSIT", ALICE, "ETH", 3 * 10**8, ID_EPOCH_US + 1)
    write_batch(conn, build_rows([deposit]), fence=mine)  # still in charge: commits
    assert claim_fence(conn, lock_timeout=2.0) == mine + 1  # a newer writer
    with pytest.raises(WriterFenced, match="newer writer"):
        write_batch(conn, build_rows([deposit]), statement_timeout=5.0, fence=mine)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # rolled back
    assert one(conn, "SELECT count(*) FROM ledger_entries WHERE user_id = %s AND asset = 'ETH'", ALICE) == 1


def test_a_batch_whose_connection_is_lost_under_it_has_an_unknown_outcome_and_others_do_not(
    conn: psycopg.Connection[Any], migrated_pg_url: str,
) -> None:
    s = Scenario()
    s.deposit(ALICE, "USDT", "1000")
    write(conn, s.facts)
    s.deposit(ALICE, "USDT", "1")
    with psycopg.connect(migrated_pg_url, autocommit=True) as blocker:  # holds alice's balance row
        blocker.execute("BEGIN")
        blocker.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (ALICE,))
        with pytest.raises(StorageUnavailable) as refused:  # the server cancels the statement: rolled back
            write_batch(conn, build_rows(s.facts[-1:]), statement_timeout=0.2)
        assert not isinstance(refused.value, CommitOutcomeUnknown)

        outcome: list[BaseException] = []

        def commit() -> None:
            try:
                write_batch(conn, build_rows(s.facts[-1:]))
            except BaseException as exc:
                outcome.append(exc)

        committer = threading.Thread(target=commit)
        committer.start()
        backend = conn.info.backend_pid
        deadline = time.monotonic() + 10.0
        while blocker.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                              (backend,)).fetchone() != ("Lock",):
            assert time.monotonic() < deadline, "the batch never waited for the row"
            time.sleep(0.02)
        blocker.execute("SELECT pg_terminate_backend(%s)", (backend,))  # lost under the batch
        committer.join(timeout=10.0)
        blocker.execute("ROLLBACK")
    assert len(outcome) == 1 and isinstance(outcome[0], CommitOutcomeUnknown), outcome
    assert "the outcome is unknown" in str(outcome[0])


def test_a_batch_on_a_connection_the_server_closed_while_idle_is_refused_before_sending(
    conn: psycopg.Connection[Any], migrated_pg_url: str,
) -> None:
    s = Scenario()
    s.deposit(ALICE, "USDT", "1000")
    with psycopg.connect(migrated_pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    time.sleep(0.1)
    with pytest.raises(StorageUnavailable, match="nothing was sent") as refused:
        write_batch(conn, build_rows(s.facts))
    assert not isinstance(refused.value, CommitOutcomeUnknown)
