"""Events: sequence numbers, timestamps, byte-identical determinism; fees and the fee account."""

from __future__ import annotations

from decimal import Decimal

from tests.engine.harness import ATOMS, Harness, of_type
from tests.engine.streams import StreamSettings, random_commands
from tradeengine.engine import (
    FEE_ACCOUNT,
    DomainError,
    MatchingEngine,
    OrderType,
    PairSpec,
    PlaceOrder,
    Side,
    TradeExecuted,
    decode_events,
    encode_events,
    trade_id,
)


def test_every_event_gets_the_next_sequence_number_continuing_from_the_start() -> None:
    h = Harness(sequence=41)
    events = h.sell(1, 100) + h.buy(2, 100)
    assert [e.sequence for e in events] == list(range(42, 42 + len(events)))
    assert h.engine.sequence == events[-1].sequence


def test_events_carry_the_commands_timestamp() -> None:
    h = Harness()
    command = h.order(Side.BUY, OrderType.LIMIT, quantity=1, price=100)
    assert {e.timestamp for e in h.run(command)} == {command.timestamp}


def test_trade_ids_are_the_pair_and_the_trade_events_sequence() -> None:
    h = Harness()
    h.sell(1, 100)
    trade = of_type(h.buy(1, 100), TradeExecuted)[0]
    assert trade.trade_id("BTC-USDT") == trade_id("BTC-USDT", trade.sequence) == f"BTC-USDT:{trade.sequence}"


def test_the_same_commands_give_byte_identical_events() -> None:
    spec = Harness().spec
    commands = random_commands(spec, 3000, seed=7, settings=StreamSettings())
    payloads = []
    for _ in range(2):
        engine = MatchingEngine(spec, Harness().ledger)
        chunks = []
        for command in commands:
            try:
                chunks.append(encode_events(engine.execute(command)))
            except DomainError as exc:  # a rejection is part of the outcome
                chunks.append(type(exc).__name__.encode())
        payloads.append(b"|".join(chunks))
    assert payloads[0] == payloads[1]
    assert len(payloads[0]) > 100_000


def test_events_round_trip_through_msgpack() -> None:
    h = Harness()
    events = h.sell(1, 100) + h.buy(2, 100)
    assert decode_events(encode_events(events)) == events


def test_each_side_pays_its_rate_on_what_it_receives_to_the_fee_account() -> None:
    h = Harness()
    h.sell(10, 100, order_id="maker")
    trade = of_type(h.buy(10, 100, order_id="taker"), TradeExecuted)[0]
    assert trade.buyer_fee == 10 * ATOMS * 2 // 1000  # taker rate 0.2 % of 10 BTC, in BTC
    assert trade.seller_fee == 1000 * ATOMS // 1000  # maker rate 0.1 % of 1000 USDT, in USDT
    ledger = h.ledger
    assert ledger.available[(FEE_ACCOUNT, "BTC")] == trade.buyer_fee
    assert ledger.available[(FEE_ACCOUNT, "USDT")] == trade.seller_fee
    assert ledger.available[("alice", "BTC")] == 10 * ATOMS - trade.buyer_fee


def test_fees_are_rounded_up_to_one_atom() -> None:
    spec = PairSpec(
        symbol="BTC-USDT",
        base_asset="BTC",
        quote_asset="USDT",
        tick_size=Decimal(1),
        lot_size=Decimal("0.00000001"),
        min_quantity=Decimal("0.00000001"),
        max_quantity=Decimal(10),
        maker_fee=Decimal("0.001"),
        taker_fee=Decimal("0.0025"),
    )
    h = Harness(spec)
    h.sell(3, 1, order_id="maker")
    trade = of_type(h.buy(3, 1, order_id="taker"), TradeExecuted)[0]
    assert trade.base_amount == 3 and trade.buyer_fee == 1  # 0.0075 atoms → 1
    assert trade.quote_amount == 3 and trade.seller_fee == 1  # 0.003 atoms → 1


def test_balances_of_every_asset_sum_to_deposits_after_trading() -> None:
    h = Harness()
    for command in random_commands(h.spec, 2000, seed=3, settings=StreamSettings()):
        try:
            h.run(command)
        except DomainError:
            continue
    deposits = {
        asset: sum(v for (_, a), v in h.ledger.deposits.items() if a == asset) for asset in ("BTC", "USDT")
    }
    assert h.ledger.total("BTC") == deposits["BTC"] and h.ledger.total("USDT") == deposits["USDT"]


def test_place_order_commands_are_immutable() -> None:
    command = PlaceOrder(
        order_id="o", user_id="u", side=Side.BUY, order_type=OrderType.LIMIT, quantity=1, price=1
    )
    try:
        command.quantity = 2  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("PlaceOrder is mutable")
