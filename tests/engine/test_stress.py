"""Seeded stress: 1 000 000 random commands with the money ledger applied to every command and
check_invariants() every 1 000 steps. Slow: run with `pytest -m slow tests/engine/test_stress.py`."""

from __future__ import annotations

import pytest

from tests.engine.harness import Harness
from tests.engine.streams import StreamSettings, random_commands
from tradeengine.engine import DomainError

TOTAL = 1_000_000
CHUNK = 50_000


@pytest.mark.slow
def test_a_million_random_commands_keep_the_book_and_the_money_consistent() -> None:
    h = Harness()
    engine, ledger = h.engine, h.ledger
    executed = rejected = 0
    for chunk in range(TOTAL // CHUNK):
        settings = StreamSettings(users=3 + chunk % 6, spread=4 + chunk % 20, max_quantity=5 + chunk % 11)
        commands = random_commands(h.spec, CHUNK, seed=1000 + chunk, settings=settings)
        # ids restart per chunk: prefix them so they stay unique across chunks
        for step, command in enumerate(commands, 1):
            command = _prefixed(command, chunk)
            try:
                events = engine.execute(command)
            except DomainError:
                rejected += 1
                continue
            ledger.apply(events)
            executed += 1
            if step % 1000 == 0:
                engine.check_invariants()
    engine.check_invariants()
    assert executed + rejected == TOTAL
    assert ledger.total("BTC") == sum(v for (_, a), v in ledger.deposits.items() if a == "BTC")
    assert ledger.total("USDT") == sum(v for (_, a), v in ledger.deposits.items() if a == "USDT")


def _prefixed(command: object, chunk: int) -> object:
    import msgspec

    order_id = getattr(command, "order_id", None)
    if order_id is None:
        return command
    return msgspec.structs.replace(command, order_id=f"c{chunk}-{order_id}")  # type: ignore[type-var]
