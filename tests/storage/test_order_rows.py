"""storage.rows.build_order_rows: the order and trade rows of build_rows, always, without the rest.

The HTTP layer renders a placement's answer from ``build_order_rows`` (the fold without ledger, balances
and outbox events). Seeded random streams over every order type and option (rests, fills, IOC/FOK
expiries, self-trade prevention, post-only rejections, stops, amends, cancels) give outcomes of every
shape; both folds are compared on single commands (what the routes fold) and on whole groups. Also here:
the RFC 3339 rendering, field by field.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import pytest

from tests.engine.ledger import RichLedger
from tests.engine.streams import StreamSettings, random_commands
from tests.storage.test_rows_scenarios import BTC_USDT
from tradeengine.engine import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    EngineEvent,
    MatchingEngine,
    OrderAccepted,
    OrderAmended,
    OrderExpired,
    OrderRejected,
    PlaceOrder,
    StopTriggered,
    TradeExecuted,
)
from tradeengine.storage.facts import PairFacts
from tradeengine.storage.ids import ID_EPOCH_US
from tradeengine.storage.rows import RowSet, build_order_rows, build_rows, rfc3339

SPEC = dataclasses.replace(BTC_USDT, min_notional=Decimal(0))  # tiny random orders are valid
START_US = 1_795_000_000_000_000  # 2026-11-18


def _numbered(commands: list[Command]) -> list[Command]:
    """The stream's commands with ids as the engine gets them: order ids that encode their instant,
    numeric user ids."""
    order_ids: dict[str, str] = {}

    def order_id(name: str, timestamp: int) -> str:
        if name not in order_ids:
            order_ids[name] = str(((timestamp - ID_EPOCH_US) << 12) | len(order_ids) % 4096)
        return order_ids[name]

    numbered: list[Command] = []
    for command in commands:
        timestamp = START_US + command.timestamp * 1000
        user_id = str(1001 + int(command.user_id[1:]))
        if isinstance(command, PlaceOrder | CancelOrder | AmendOrder):
            numbered.append(msgspec.structs.replace(command, order_id=order_id(command.order_id, timestamp),
                                                    user_id=user_id, timestamp=timestamp))
        else:
            assert isinstance(command, CancelAll)
            numbered.append(msgspec.structs.replace(command, user_id=user_id, timestamp=timestamp))
    return numbered


def _outcomes(seed: int, count: int) -> list[tuple[Command, list[EngineEvent]]]:
    engine = MatchingEngine(SPEC, RichLedger(SPEC))
    settings = StreamSettings(mid=6_500_000, spread=6, max_quantity=8)
    results = []
    for command in _numbered(random_commands(SPEC, count, seed=seed, settings=settings)):
        try:
            events = engine.execute(command)
        except Exception:  # a cancel or amend of an unknown, final or foreign order: no events
            continue
        results.append((command, events))
    return results


def _order_and_trade_rows(rows: RowSet) -> tuple[object, ...]:
    return rows.orders, rows.order_updates, rows.client_order_ids, rows.trades


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_command_folds_to_the_order_and_trade_rows_build_rows_makes(seed: int) -> None:
    kinds: set[type] = set()
    for command, events in _outcomes(seed, 1500):
        kinds.update(type(e) for e in events)
        facts = PairFacts(SPEC, events)
        lean = build_order_rows(facts)
        assert _order_and_trade_rows(lean) == _order_and_trade_rows(build_rows([facts])), command
        assert (lean.ledger_entries, lean.balance_deltas, lean.outbox) == ([], [], [])
    # the streams reach every shape of an outcome
    assert {OrderAccepted, OrderRejected, TradeExecuted, OrderExpired, OrderAmended, StopTriggered} <= kinds


def test_a_group_of_commands_folds_like_build_rows() -> None:
    """Later commands' events (amends, cancels, stop triggers, fills as a maker) fold in too."""
    events = [event for _, command_events in _outcomes(4, 400) for event in command_events]
    facts = PairFacts(SPEC, events)
    assert _order_and_trade_rows(build_order_rows(facts)) == _order_and_trade_rows(build_rows([facts]))


def test_rfc3339_writes_every_field_with_microseconds_and_a_four_digit_year() -> None:
    rng = random.Random(8)
    moments = [datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC),
               datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(999, 1, 1, tzinfo=UTC),
               datetime(1000, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)]
    for _ in range(5000):
        zone = rng.choice([None, UTC, timezone(timedelta(minutes=rng.randint(-720, 720)))])
        day = (rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28))
        micros = rng.choice([0, rng.randint(0, 999999)])
        time = (rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59), micros)
        moments.append(datetime(*day, *time, tzinfo=zone))
    for moment in moments:
        assert rfc3339(moment) == (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
                                   f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z")
