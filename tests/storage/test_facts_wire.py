"""Facts as the writer's frames carry them (`storage.facts_wire`): what is decoded is what was encoded."""

from __future__ import annotations

import dataclasses
import random
import typing
import uuid
from decimal import Decimal

import msgspec
import pytest

from tests.storage.test_rows_scenarios import ALICE, BOB, CAROL, ETH_USDT, FullDay, Scenario
from tradeengine.engine import EngineEvent, OrderType, PairSpec, SelfTradePrevention, Side, TimeInForce
from tradeengine.storage.facts import Facts, PairFacts, Transfer
from tradeengine.storage.facts_wire import SPEC_FIELDS, FactsDecoder, FactsEncoder, _SpecWire
from tradeengine.storage.rows import build_rows
from tradeengine.storage.wallet_commands import WalletSettledFacts


def varied_facts(seed: int) -> list[Facts]:
    """Every kind of event on two pairs (market and limit orders, IOC, every STP mode, cancels, an amend,
    a triggered stop), deposits and withdrawals."""
    rng = random.Random(seed)
    day = FullDay()
    eth = Scenario(ETH_USDT, start_us=1_795_000_000_500_000)
    for user in (ALICE, BOB, CAROL):
        eth.deposit(user, "USDT", "1000000")
        eth.deposit(user, "ETH", "1000")
    for _ in range(200):
        user = rng.choice([ALICE, BOB, CAROL])
        if rng.random() < 0.2:
            eth.place(user, rng.choice(list(Side)), str(rng.randint(1, 30) / 100), None, OrderType.MARKET,
                      self_trade_prevention=rng.choice(list(SelfTradePrevention)))
        else:
            eth.place(user, rng.choice(list(Side)), str(rng.randint(1, 50) / 100),
                      str(rng.randint(990, 1010) * 3),
                      time_in_force=rng.choice([TimeInForce.GTC, TimeInForce.IOC]),
                      self_trade_prevention=rng.choice(list(SelfTradePrevention)))
    eth.place(BOB, Side.SELL, "1", "3000")
    eth.place(ALICE, Side.BUY, "1", "3000", post_only=True, client_order_id="po-1")  # rejected
    eth.withdraw(ALICE, "USDT", "1")
    return day.facts + eth.facts


def test_every_fact_decodes_equal_to_what_was_encoded_and_builds_the_same_rows() -> None:
    facts = varied_facts(seed=7)
    kinds = {type(event) for fact in facts if isinstance(fact, PairFacts) for event in fact.events}
    assert kinds == set(typing.get_args(EngineEvent)), "every kind of event is in the sample"
    decoded = FactsDecoder().decode(FactsEncoder().encode(facts))
    assert decoded == facts
    assert [type(fact) for fact in decoded] == [type(fact) for fact in facts]
    assert [type(event) for fact in decoded if isinstance(fact, PairFacts) for event in fact.events] == [
        type(event) for fact in facts if isinstance(fact, PairFacts) for event in fact.events]
    assert build_rows(decoded) == build_rows(facts)


def test_facts_settled_at_the_wallet_service_stay_of_their_own_kind() -> None:
    facts: list[Facts] = [WalletSettledFacts(fact.spec, fact.events) for fact in FullDay().facts
                          if isinstance(fact, PairFacts)]
    decoded = FactsDecoder().decode(FactsEncoder().encode(facts))
    assert decoded == facts
    assert all(type(fact) is WalletSettledFacts for fact in decoded)


def test_amounts_beyond_64_bits_and_every_transfer_field_survive() -> None:
    transfer_id = uuid.uuid4()
    huge = Transfer("WITHDRAWAL", 1001, "SHIB", 10**30 + 7, 1_795_000_000_000_001, transfer_id)
    (decoded,) = FactsDecoder().decode(FactsEncoder().encode([huge]))
    assert decoded == huge and decoded.transfer_id == transfer_id and decoded.amount == 10**30 + 7


def test_the_spec_travels_whole_and_each_distinct_one_is_made_once_by_the_decoder() -> None:
    facts = [fact for fact in varied_facts(seed=3) if isinstance(fact, PairFacts)]
    decoded = FactsDecoder().decode(FactsEncoder().encode(facts))
    assert {fact.spec for fact in decoded} == {fact.spec for fact in facts}
    assert len({id(fact.spec) for fact in decoded}) == len({fact.spec for fact in facts}) == 2
    changed = dataclasses.replace(facts[0].spec, taker_fee=Decimal("0.0025"))  # the same pair, new fees
    encoder, decoder = FactsEncoder(), FactsDecoder()
    before, after = (decoder.decode(encoder.encode([PairFacts(spec, facts[0].events)]))[0]
                     for spec in (facts[0].spec, changed))
    assert before.spec == facts[0].spec and after.spec == changed
    # Specs equal in value but written differently stay as written (Decimal("0.010") == Decimal("0.01")).
    respelled = dataclasses.replace(facts[0].spec, tick_size=facts[0].spec.tick_size * Decimal("1.0"))
    assert respelled == facts[0].spec and str(respelled.tick_size) != str(facts[0].spec.tick_size)
    (again,) = decoder.decode(encoder.encode([PairFacts(respelled, facts[0].events)]))
    assert str(again.spec.tick_size) == str(respelled.tick_size)


def test_the_wire_form_of_a_spec_holds_every_field_it_is_made_from_with_its_type() -> None:
    hints = typing.get_type_hints(PairSpec)
    assert [hints[name] for name in SPEC_FIELDS] == list(typing.get_args(_SpecWire))


def test_what_is_not_a_fact_is_refused_both_ways() -> None:
    with pytest.raises(TypeError, match="not a fact"):
        FactsEncoder().encode([("DEPOSIT", 1001)])  # type: ignore[list-item]
    with pytest.raises(msgspec.DecodeError):
        FactsDecoder().decode(b"[1, 2")
    with pytest.raises(msgspec.ValidationError):
        FactsDecoder().decode(b'[["x", 1]]')
