"""storage.rows: engine facts → the rows of one commit (pure; no database)."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from decimal import Decimal

import pytest

from tests.storage.test_rows_scenarios import ALICE, BOB, CAROL, ETH_USDT, FullDay, Scenario
from tradeengine.engine import (
    FEE_ACCOUNT,
    CancelAll,
    OrderType,
    PairSpec,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradeExecuted,
)
from tradeengine.storage.facts import Facts, PairFacts, Transfer
from tradeengine.storage.ids import created_at_of, datetime_of_us
from tradeengine.storage.rows import (
    EVENT_NAMESPACE,
    BalanceDelta,
    PairProgress,
    RowSet,
    build_rows,
    event_id,
)

D = Decimal


def totals_per_asset(deltas: list[BalanceDelta]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for delta in deltas:
        totals[delta.asset] += delta.available + delta.locked
    return dict(totals)


def ledger_sums(rows: RowSet) -> dict[tuple[int, str], tuple[Decimal, Decimal]]:
    sums: dict[tuple[int, str], list[Decimal]] = defaultdict(lambda: [D(0), D(0)])
    for entry in rows.ledger_entries:
        sums[(entry.user_id, entry.asset)][0] += entry.available_delta
        sums[(entry.user_id, entry.asset)][1] += entry.locked_delta
    return {key: (a, b) for key, (a, b) in sums.items() if a or b}


def engine_facts(facts: list[Facts]) -> list[Facts]:
    return [f for f in facts if isinstance(f, PairFacts)]


# -- money ----------------------------------------------------------------------------------------------


def test_engine_facts_move_money_between_accounts_without_creating_any() -> None:
    rows = build_rows(engine_facts(FullDay().facts))
    assert rows.balance_deltas, "the day moves money"
    assert all(total == 0 for total in totals_per_asset(rows.balance_deltas).values())


def test_transfers_change_the_total_of_an_asset_by_exactly_their_amounts() -> None:
    day = FullDay()
    day.scenario.withdraw(ALICE, "USDT", "1000")
    rows = build_rows(day.facts)
    assert totals_per_asset(rows.balance_deltas) == {"USDT": D(199000), "BTC": D(11)}


def test_ledger_entries_sum_to_the_balance_deltas() -> None:
    rows = build_rows(FullDay().facts)
    assert ledger_sums(rows) == {(d.user_id, d.asset): (d.available, d.locked) for d in rows.balance_deltas}


def test_a_crossing_buy_locks_pays_receives_pays_fees_and_gets_its_price_improvement_back() -> None:
    day = FullDay()
    rows = build_rows([PairFacts(day.scenario.spec, day.cross)])
    order = int(day.alice_buy)
    trade_id = "BTC-USDT:5"
    entries = [
        (e.user_id, e.asset, e.kind, e.amount, e.available_delta, e.locked_delta, e.order_id, e.trade_id)
        for e in rows.ledger_entries
    ]
    # 0.4 BTC at 50000 = 20000 USDT; alice locked 0.4 × 50100 = 20040; taker fee 0.001 × 0.4 BTC; bob
    # (maker) pays 0.0008 × 20000 USDT.
    assert entries == [
        (ALICE, "USDT", "RESERVE", D(20040), D(-20040), D(20040), order, None),
        (ALICE, "USDT", "TRADE_DEBIT", D(20000), D(0), D(-20000), order, trade_id),
        (ALICE, "BTC", "TRADE_CREDIT", D("0.4"), D("0.4"), D(0), order, trade_id),
        (ALICE, "BTC", "FEE", D("0.0004"), D("-0.0004"), D(0), order, trade_id),
        (1, "BTC", "FEE_INCOME", D("0.0004"), D("0.0004"), D(0), order, trade_id),
        (BOB, "BTC", "TRADE_DEBIT", D("0.4"), D(0), D("-0.4"), int(day.bob_sell), trade_id),
        (BOB, "USDT", "TRADE_CREDIT", D(20000), D(20000), D(0), int(day.bob_sell), trade_id),
        (BOB, "USDT", "FEE", D(16), D(-16), D(0), int(day.bob_sell), trade_id),
        (1, "USDT", "FEE_INCOME", D(16), D(16), D(0), int(day.bob_sell), trade_id),
        (ALICE, "USDT", "RELEASE", D(40), D(40), D(-40), order, None),
    ]
    assert rows.balance_deltas == [
        BalanceDelta(1, "BTC", D("0.0004"), D(0)),
        BalanceDelta(1, "USDT", D(16), D(0)),
        BalanceDelta(ALICE, "BTC", D("0.3996"), D(0)),
        BalanceDelta(ALICE, "USDT", D(-20000), D(0)),
        BalanceDelta(BOB, "BTC", D(0), D("-0.4")),
        BalanceDelta(BOB, "USDT", D(19984), D(0)),
    ]


def test_deposits_and_withdrawals_are_ledger_entries_of_available_funds() -> None:
    rows = build_rows([Transfer("DEPOSIT", ALICE, "USDT", 5 * 10**8, 1_795_000_000_000_000),
                       Transfer("WITHDRAWAL", ALICE, "USDT", 2 * 10**8, 1_795_000_000_000_001)])
    assert [(e.kind, e.amount, e.available_delta, e.locked_delta) for e in rows.ledger_entries] == [
        ("DEPOSIT", D(5), D(5), D(0)), ("WITHDRAWAL", D(2), D(-2), D(0)),
    ]
    assert rows.balance_deltas == [BalanceDelta(ALICE, "USDT", D(3), D(0))]
    assert [(o.routing_key, o.payload["available_delta"]) for o in rows.outbox_events] == [
        ("balance.USDT", "5"), ("balance.USDT", "-2"),
    ]


def test_a_transfer_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        build_rows([Transfer("DEPOSIT", ALICE, "USDT", 0, 1)])


@pytest.mark.parametrize("seed", range(8))
def test_random_trading_on_two_pairs_never_creates_money_and_ledger_matches_balances(seed: int) -> None:
    rng = random.Random(seed)
    btc, eth = Scenario(), Scenario(ETH_USDT, start_us=1_795_000_000_500_000)
    users = [ALICE, BOB, CAROL]
    live: dict[Scenario, list[tuple[str, int]]] = {btc: [], eth: []}
    for _ in range(300):
        s = rng.choice([btc, eth])
        action = rng.random()
        user = rng.choice(users)
        if action < 0.1 and live[s]:
            order_id, owner = live[s].pop(rng.randrange(len(live[s])))
            if s.engine.get_order(order_id) is not None:
                s.cancel(order_id, owner)
        elif action < 0.15:
            s.run(CancelAll(user_id=str(user), timestamp=s.tick()))
        elif action < 0.25:
            s.place(user, rng.choice(list(Side)), str(rng.randint(1, 30) / 100), None, OrderType.MARKET,
                    self_trade_prevention=rng.choice(list(SelfTradePrevention)))
        else:
            price = str(rng.randint(990, 1010) * (50 if s is btc else 3))
            order_id, _ = s.place(user, rng.choice(list(Side)), str(rng.randint(1, 50) / 100), price,
                                  time_in_force=rng.choice([TimeInForce.GTC, TimeInForce.IOC]),
                                  self_trade_prevention=rng.choice(list(SelfTradePrevention)))
            live[s].append((order_id, user))
    facts = btc.facts + eth.facts
    rows = build_rows(facts)
    assert any(isinstance(e, TradeExecuted) for f in facts if isinstance(f, PairFacts) for e in f.events)
    assert all(total == 0 for total in totals_per_asset(rows.balance_deltas).values())
    assert ledger_sums(rows) == {(d.user_id, d.asset): (d.available, d.locked) for d in rows.balance_deltas}
    # Batching does not change the sums: per-command groups add up to the whole.
    per_fact = [build_rows([f]) for f in facts]
    summed: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    for part in per_fact:
        for d in part.balance_deltas:
            summed[(d.user_id, d.asset)] += d.available + d.locked
    whole = {(d.user_id, d.asset): d.available + d.locked for d in rows.balance_deltas}
    assert {k: v for k, v in summed.items() if v} == {k: v for k, v in whole.items() if v}


# -- orders ---------------------------------------------------------------------------------------------


def test_an_order_created_and_changed_in_one_group_is_inserted_once_in_its_final_state() -> None:
    day = FullDay()
    rows = build_rows(day.facts)
    assert rows.order_updates == []
    orders = {str(o.id): o for o in rows.orders}
    assert set(orders) == {day.bob_sell, day.alice_buy, day.carol_stop, day.carol_rest, day.alice_buy2}
    alice = orders[day.alice_buy]
    assert (alice.status, alice.filled_quantity, alice.filled_quote) == ("FILLED", D("0.4"), D(20000))
    assert alice.created_at == created_at_of(int(day.alice_buy))
    bob = orders[day.bob_sell]
    assert (bob.status, bob.price, bob.quantity, bob.filled_quantity) == (
        "PARTIALLY_FILLED", D("50010"), D(1), D("0.6"))
    assert bob.filled_quote == D(20000) + D("5001") * 2
    amended = next(e for e in day.amend if type(e).__name__ == "OrderAmended")
    assert (bob.sequence, bob.priority) == (1, amended.priority)
    stop = orders[day.carol_stop]
    assert (stop.type, stop.status, stop.stop_price, stop.filled_quantity) == (
        "STOP_LIMIT", "FILLED", D(50005), D("0.1"))
    assert stop.priority > stop.sequence  # re-queued when triggered
    assert orders[day.carol_rest].status == "CANCELLED"
    last_bob_trade = [e for e in day.trigger if isinstance(e, TradeExecuted)][-1]
    assert bob.updated_sequence == last_bob_trade.sequence
    assert bob.updated_at == datetime_of_us(last_bob_trade.timestamp)


def test_orders_of_earlier_groups_get_updates_that_name_only_what_changed() -> None:
    day = FullDay()
    facts = day.facts
    split = facts.index(next(f for f in facts if isinstance(f, PairFacts) and f.events == day.cancel))
    rows = build_rows(facts[split:])
    updates = {str(u.id): u for u in rows.order_updates}
    assert set(updates) == {day.carol_rest, day.bob_sell, day.carol_stop}
    assert [str(o.id) for o in rows.orders] == [day.alice_buy2]
    rest = updates[day.carol_rest]
    assert (rest.status, rest.filled_quantity, rest.price, rest.quantity, rest.priority) == (
        "CANCELLED", D(0), None, None, None)
    bob = updates[day.bob_sell]
    assert (bob.status, bob.price, bob.quantity, bob.filled_quantity, bob.filled_quote) == (
        "PARTIALLY_FILLED", D(50010), D(1), D("0.6"), D("30002"))
    assert bob.created_at == created_at_of(int(day.bob_sell))
    stop = updates[day.carol_stop]
    assert (stop.status, stop.filled_quantity) == ("FILLED", D("0.1"))
    assert stop.priority is not None and stop.updated_at == datetime_of_us(day.trigger[-1].timestamp)


def test_a_market_buy_by_quote_budget_is_stored_without_a_base_quantity() -> None:
    s = Scenario()
    s.place(BOB, Side.SELL, "1", "50000")
    order_id, _ = s.place(ALICE, Side.BUY, None, None, OrderType.MARKET, quote_quantity=1000 * 10**8)
    row = next(o for o in build_rows(s.facts).orders if str(o.id) == order_id)
    assert (row.type, row.quantity, row.quote_quantity, row.time_in_force) == ("MARKET", None, D(1000), "IOC")
    assert row.status in {"FILLED", "EXPIRED"} and row.filled_quantity == D("0.02")


def test_a_post_only_order_that_would_take_is_stored_rejected_with_its_reason() -> None:
    s = Scenario()
    s.place(BOB, Side.SELL, "1", "50000")
    order_id, _ = s.place(ALICE, Side.BUY, "1", "50000", post_only=True, client_order_id="po-1")
    rows = build_rows(s.facts)
    row = next(o for o in rows.orders if str(o.id) == order_id)
    assert (row.status, row.reject_reason, row.client_order_id) == (
        "REJECTED", "POST_ONLY_WOULD_TAKE", "po-1")
    assert [(c.user_id, c.client_order_id, str(c.order_id)) for c in rows.client_order_ids] == [
        (ALICE, "po-1", order_id)]


def test_an_ioc_remainder_expires_with_its_reason() -> None:
    s = Scenario()
    s.place(BOB, Side.SELL, "0.1", "50000")
    order_id, _ = s.place(ALICE, Side.BUY, "0.3", "50000", time_in_force=TimeInForce.IOC)
    row = next(o for o in build_rows(s.facts).orders if str(o.id) == order_id)
    assert (row.status, row.filled_quantity, row.reject_reason) == (
        "EXPIRED", D("0.1"), "IMMEDIATE_OR_CANCEL")


def test_the_fee_account_is_user_one() -> None:
    rows = build_rows(FullDay().facts)
    assert {e.user_id for e in rows.ledger_entries if e.kind == "FEE_INCOME"} == {1}
    assert FEE_ACCOUNT != "1"


# -- trades, pairs, outbox ------------------------------------------------------------------------------


def test_trades_carry_decimal_amounts_fees_parties_and_the_core_trade_id() -> None:
    day = FullDay()
    rows = build_rows(day.facts)
    first = rows.trades[0]
    assert first._asdict() == {
        "id": "BTC-USDT:5", "symbol": "BTC-USDT", "price": D(50000), "quantity": D("0.4"),
        "quote_quantity": D(20000), "buyer_order_id": int(day.alice_buy),
        "seller_order_id": int(day.bob_sell),
        "buyer_user_id": ALICE, "seller_user_id": BOB, "taker_side": "BUY", "buyer_fee": D("0.0004"),
        "seller_fee": D(16), "executed_at": datetime_of_us(day.cross[0].timestamp), "sequence": 5,
    }
    assert [t.taker_side for t in rows.trades] == ["BUY", "BUY", "BUY"]


def test_each_pair_advances_to_its_last_sequence_and_last_trade_price() -> None:
    btc = FullDay().scenario
    eth = Scenario(ETH_USDT)
    eth.place(ALICE, Side.BUY, "1", "3000")
    rows = build_rows(btc.facts + eth.facts)
    assert rows.pairs == [
        PairProgress("BTC-USDT", btc.engine.sequence, D(50010)),
        PairProgress("ETH-USDT", eth.engine.sequence, None),
    ]


def test_a_later_group_without_trades_keeps_the_last_price_unknown() -> None:
    day = FullDay()
    day.scenario.place(ALICE, Side.BUY, "0.1", "40000")
    rows = build_rows(day.facts[-1:])
    assert rows.pairs == [PairProgress("BTC-USDT", day.scenario.engine.sequence, None)]


def test_outbox_has_an_event_per_order_change_per_trade_and_per_balance_change() -> None:
    day = FullDay()
    rows = build_rows(engine_facts(day.facts))
    keys = [o.routing_key for o in rows.outbox_events]
    assert keys.count("trade.BTC-USDT") == 3
    changes = [o for o in rows.outbox_events if o.event_type.startswith("order.")]
    assert [o.routing_key for o in changes if o.payload["order_id"] == day.carol_stop] == [
        "order.BTC-USDT.PENDING_TRIGGER", "order.BTC-USDT.OPEN", "order.BTC-USDT.FILLED"]
    assert [o.routing_key for o in changes if o.payload["order_id"] == day.carol_rest] == [
        "order.BTC-USDT.OPEN", "order.BTC-USDT.CANCELLED"]
    balance_keys = {o.routing_key for o in rows.outbox_events if o.event_type == "balance.changed"}
    assert balance_keys == {"balance.BTC", "balance.USDT"}
    assert len({o.event_id for o in rows.outbox_events}) == len(rows.outbox_events)


def test_the_outbox_holds_one_message_per_pair_and_one_for_the_transfers_in_fact_order() -> None:
    btc, eth = FullDay(), Scenario(ETH_USDT, start_us=1_795_000_000_500_000)
    eth.deposit(ALICE, "ETH", "3")
    eth.place(ALICE, Side.SELL, "1", "3000")
    eth.place(BOB, Side.BUY, "0.5", "3000")
    facts = [*btc.facts[:6], *eth.facts, *btc.facts[6:]]
    rows = build_rows(facts)
    assert [(m.symbol, m.first_sequence, m.last_sequence) for m in rows.outbox] == [
        (None, None, None),
        ("BTC-USDT", 1, btc.scenario.engine.sequence),
        ("ETH-USDT", 1, eth.engine.sequence),
    ]
    for message in rows.outbox:
        own = [f for f in facts if (f.spec.symbol if isinstance(f, PairFacts) else None) == message.symbol]
        assert message.events == build_rows(own).outbox_events  # that pair's events, in fact order
    for message in rows.outbox[1:]:
        sequences = [e.sequence or 0 for e in message.events]
        assert sequences == sorted(sequences) and sequences[-1] == message.last_sequence
    assert len(rows.outbox_events) == sum(len(build_rows([f]).outbox_events) for f in facts)


def test_outbox_payloads_are_json_ready_with_decimal_strings_and_rfc3339_microseconds() -> None:
    day = FullDay()
    rows = build_rows([PairFacts(day.scenario.spec, day.cross)])
    trade = next(o for o in rows.outbox_events if o.event_type == "trade.executed")
    assert trade.payload["price"] == "50000" and trade.payload["buyer_fee"] == "0.0004"
    assert trade.payload["executed_at"].endswith("Z") and len(trade.payload["executed_at"]) == 27
    filled = next(o for o in rows.outbox_events if o.routing_key == "order.BTC-USDT.FILLED")
    assert filled.payload["average_price"] == "50000" and filled.payload["filled_quantity"] == "0.4"
    assert all(not isinstance(v, (Decimal, float)) for o in rows.outbox_events for v in o.payload.values())


def test_event_ids_are_uuid5_of_symbol_sequence_and_kind_and_the_same_on_every_build() -> None:
    facts = FullDay().facts
    first, second = build_rows(facts), build_rows(facts)
    assert first == second
    trade = next(o for o in first.outbox_events if o.event_type == "trade.executed")
    assert trade.event_id == event_id("BTC-USDT", 5, "trade")
    assert trade.event_id == uuid.uuid5(EVENT_NAMESPACE, "BTC-USDT:5:trade")
    assert all(o.event_id.version == 5 for o in first.outbox_events)


def test_identical_transfers_get_distinct_event_ids_and_each_keeps_its_own() -> None:
    first = Transfer("DEPOSIT", ALICE, "USDT", 10**8, 1_795_000_000_000_000)
    second = Transfer("DEPOSIT", ALICE, "USDT", 10**8, 1_795_000_000_000_000)
    rows = build_rows([first, second])
    assert len({o.event_id for o in rows.outbox_events}) == 2
    assert rows.balance_deltas == [BalanceDelta(ALICE, "USDT", D(2), D(0))]
    assert build_rows([first]).outbox_events[0].event_id == build_rows([first]).outbox_events[0].event_id


def test_a_command_without_events_writes_nothing_but_counts_as_a_fact() -> None:
    spec: PairSpec = FullDay().scenario.spec
    rows = build_rows([PairFacts(spec, [])])
    assert (rows.facts, rows.row_count) == (1, 0)
