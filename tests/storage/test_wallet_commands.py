"""storage.wallet_commands and the remote-wallet rows of storage.rows / storage.writer."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest

from tests.storage.test_rows_scenarios import FullDay, add_users
from tradeengine.engine import FEE_ACCOUNT, FundsReleased, TradeExecuted, balance_deltas
from tradeengine.storage import create_pool
from tradeengine.storage.facts import PairFacts, core_user_id
from tradeengine.storage.recovery import load_pair_state, load_wallet_reservations, reserved_funds
from tradeengine.storage.rows import build_rows
from tradeengine.storage.wallet_commands import (
    WalletCommandRow,
    WalletSettledFacts,
    decode_movements,
    fetch_pending,
    insert_command,
    mark_delivered,
    mark_refused,
    read_backlog,
    record_failure,
)
from tradeengine.storage.writer import write_batch


def remote(facts: list[Any]) -> list[WalletSettledFacts]:
    return [WalletSettledFacts(f.spec, f.events) for f in facts if isinstance(f, PairFacts)]


def day_trades(day: FullDay) -> list[tuple[Any, TradeExecuted]]:
    return [(f.spec, e) for f in day.facts if isinstance(f, PairFacts) for e in f.events
            if isinstance(e, TradeExecuted)]


def test_each_settle_equals_the_built_in_ledgers_settlement_of_its_trade() -> None:
    day = FullDay()
    rows = build_rows(remote(day.facts))
    settles = {c.idempotency_key: c for c in rows.wallet_commands if c.kind == "settle"}
    trades = day_trades(day)
    assert len(settles) == len(trades) == 3
    for spec, trade in trades:
        command = settles[f"settle:{spec.symbol}:{trade.sequence}"]
        movements = decode_movements(command.movements)
        ledger = {key: tuple(delta) for key, delta in balance_deltas(spec, [trade]).items() if any(delta)}
        assert {(user, asset): (available, locked) for user, asset, available, locked in movements} == ledger
        assert len({(user, asset) for user, asset, _, _ in movements}) == len(movements)


def test_settles_match_the_built_in_ledger_rows_and_sum_to_zero_per_asset_with_the_fee_account() -> None:
    day = FullDay()
    local = build_rows([f for f in day.facts if isinstance(f, PairFacts)])
    by_trade: dict[str, dict[tuple[str, str], list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for entry in local.ledger_entries:
        if entry.trade_id is not None:
            sums = by_trade[entry.trade_id][(core_user_id(entry.user_id), entry.asset)]
            sums[0] += int(entry.available_delta * 10**8)
            sums[1] += int(entry.locked_delta * 10**8)
    rows = build_rows(remote(day.facts))
    for command in (c for c in rows.wallet_commands if c.kind == "settle"):
        trade_id = command.idempotency_key.removeprefix("settle:")
        movements = decode_movements(command.movements)
        expected = {key: tuple(v) for key, v in by_trade[trade_id].items() if any(v)}
        assert {(u, a): (av, lo) for u, a, av, lo in movements} == expected
        totals: dict[str, int] = defaultdict(int)
        for _, asset, available, locked in movements:
            totals[asset] += available + locked
        assert set(totals.values()) == {0}
        assert any(user == FEE_ACCOUNT for user, _, _, _ in movements)


def test_each_release_of_a_cancel_or_price_improvement_becomes_one_release_command() -> None:
    day = FullDay()
    rows = build_rows(remote(day.facts))
    releases = [e for f in day.facts if isinstance(f, PairFacts) for e in f.events
                if isinstance(e, FundsReleased)]
    commands = [c for c in rows.wallet_commands if c.kind == "release"]
    assert [c.idempotency_key for c in commands] == [f"release:BTC-USDT:{e.sequence}" for e in releases]
    for command, release in zip(commands, releases, strict=True):
        assert decode_movements(command.movements) == [
            (release.user_id, release.asset, release.amount, -release.amount)]
    (cancel_release,) = [e for e in day.cancel if isinstance(e, FundsReleased)]
    assert f"release:BTC-USDT:{cancel_release.sequence}" in {c.idempotency_key for c in commands}


def test_wallet_command_keys_are_stable_whatever_the_batching() -> None:
    facts = remote(FullDay().facts)
    together = build_rows(facts).wallet_commands
    one_by_one = [c for f in facts for c in build_rows([f]).wallet_commands]
    assert together == one_by_one == build_rows(remote(FullDay().facts)).wallet_commands
    assert len({c.idempotency_key for c in together}) == len(together)


def test_a_remote_group_writes_no_local_ledger_and_a_mixed_group_is_refused() -> None:
    day = FullDay()
    rows = build_rows(remote(day.facts))
    assert rows.ledger_entries == [] and rows.balance_deltas == []
    assert rows.trades and rows.orders and rows.outbox
    assert build_rows([f for f in day.facts if isinstance(f, PairFacts)]).wallet_commands == []
    with pytest.raises(ValueError, match="mixes"):
        build_rows([*remote(day.facts), *[f for f in day.facts if isinstance(f, PairFacts)]])


# -- database -------------------------------------------------------------------------------------------


@pytest.fixture
def pool(migrated_pg_url: str) -> Iterator[psycopg_pool.ConnectionPool]:
    with psycopg.connect(migrated_pg_url) as conn:
        add_users(conn)
    pool = create_pool(migrated_pg_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        pool.close()


def test_the_writer_commits_wallet_commands_with_their_facts_and_no_balances(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    rows = build_rows(remote(FullDay().facts))
    with pool.connection() as conn:
        write_batch(conn, rows)
        assert conn.execute("SELECT count(*) FROM balances").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM trades").fetchone() == (3,)
    pending = fetch_pending(pool, 100)
    assert [(p.idempotency_key, p.kind) for p in pending] == [(c.idempotency_key, c.kind)
                                                               for c in rows.wallet_commands]
    assert [p.movements for p in pending] == [decode_movements(c.movements) for c in rows.wallet_commands]


def test_pending_commands_are_delivered_in_id_order_counted_and_refused_ones_parked(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    for n in range(4):
        movements = f'[["7","BTC","{n + 1}","-{n + 1}"]]'
        insert_command(pool, WalletCommandRow(f"release:X:{n}", "release", movements))
    insert_command(pool, WalletCommandRow("release:X:0", "release", '[["7","BTC","9","-9"]]'))  # no-op
    first, second, third, fourth = fetch_pending(pool, 10)
    assert first.movements == [("7", "BTC", 1, -1)]
    mark_delivered(pool, [first.id])
    record_failure(pool, second.id, "503")
    mark_refused(pool, third.id, "409 INSUFFICIENT_LOCKED")
    pending = fetch_pending(pool, 10)
    assert [(p.id, p.attempts) for p in pending] == [(second.id, 1), (fourth.id, 0)]
    backlog = read_backlog(pool)
    assert (backlog.pending, backlog.refused) == (2, 1) and backlog.oldest_age >= 0


def test_the_reconciliation_snapshot_expects_what_open_orders_reserve_plus_what_pending_commands_free(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    day = FullDay()
    rows = build_rows(remote(day.facts))
    with pool.connection() as conn:
        write_batch(conn, rows)
    specs = [day.scenario.spec]
    reserved = reserved_funds([(spec, load_pair_state(pool, spec).snapshots) for spec in specs])
    snapshot = load_wallet_reservations(pool, specs)
    assert snapshot.reserved == reserved and reserved, "bob's partly filled sell still reserves BTC"
    # Nothing delivered yet: every settle and release of the day will still take from locked.
    pending: dict[tuple[str, str], int] = defaultdict(int)
    for command in rows.wallet_commands:
        for user, asset, _, locked in decode_movements(command.movements):
            pending[(user, asset)] += locked
    assert snapshot.pending_locked == dict(pending)
    expected = snapshot.expected_locked()
    for key in reserved.keys() | pending.keys():
        assert expected.get(key, 0) == reserved.get(key, 0) - pending.get(key, 0)
    mark_delivered(pool, [p.id for p in fetch_pending(pool, 100)])
    insert_command(pool, WalletCommandRow("void:reserve:x:1", "void", '[["7","BTC","-5","5"]]'))
    insert_command(pool, WalletCommandRow("unlock:x:2", "release", '[["8","ETH","5","-5"]]'))
    _void, refused = fetch_pending(pool, 10)
    mark_refused(pool, refused.id, "409")
    after = load_wallet_reservations(pool, specs)
    assert after.pending_locked == {} and after.pending_voids == 1 and after.refused == {("8", "ETH")}
    assert after.expected_locked() == {key: amount for key, amount in reserved.items() if amount}
