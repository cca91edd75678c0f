"""A graceful stop while many callers are mid-stream: every acknowledged order is committed, and every
caller gets its result or an error within the request timeout (nobody waits forever).
"""

from __future__ import annotations

import threading
import time

from tests.actors.system_harness import (
    assert_locked_equals_reserved,
    assert_money_conserved,
    database_pool,
    fund,
    limit,
    order_id_of,
    prepare_database,
    running_system,
    stored_order_ids,
    wait_until,
)
from tradeengine.engine import Side
from tradeengine.engine.errors import TradeEngineError

CALLERS = 16
REQUEST_TIMEOUT = 3.0
SYMBOLS = (("BTC-USDT", "50000", "0.001"), ("ETH-USDT", "3000", "0.01"), ("SOL-USDT", "150", "0.1"))


def test_stopping_mid_stream_commits_every_acknowledged_order_and_leaves_no_caller_waiting(
    machine_pg_url: str, writer_process: bool,
) -> None:
    prepare_database(machine_pg_url)
    acked: list[int] = []
    refused: list[TradeEngineError] = []
    unexpected: list[BaseException] = []
    slowest = [0.0]
    lock = threading.Lock()
    stop_calling = threading.Event()

    with database_pool(machine_pg_url) as pool:
        with running_system(pool, request_timeout=REQUEST_TIMEOUT, writer_process=writer_process) as system:
            fund(system)
            exchange = system.exchange

            def call(caller: int) -> None:
                n = 0
                while not stop_calling.is_set():
                    symbol, price, quantity = SYMBOLS[(caller + n) % len(SYMBOLS)]
                    side, user = (Side.BUY, 1001 + caller % 2) if n % 2 else (Side.SELL, 1003 + caller % 2)
                    started = time.monotonic()
                    try:
                        outcome = exchange.place(user, limit(symbol, side, quantity, price))
                    except TradeEngineError as exc:
                        with lock:
                            refused.append(exc)
                    except BaseException as exc:
                        unexpected.append(exc)
                    else:
                        with lock:
                            acked.append(order_id_of(outcome))
                    with lock:
                        slowest[0] = max(slowest[0], time.monotonic() - started)
                    n += 1

            callers = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(CALLERS)]
            for thread in callers:
                thread.start()
            wait_until(lambda: len(acked) >= 100, 30, "a stream under way")
            stopping = time.monotonic()
            system.stop()
            stopped_in = time.monotonic() - stopping
            wait_until(lambda: len(refused) >= CALLERS, 10, "callers refused once the engine stopped")
            stop_calling.set()
            for thread in callers:
                thread.join(REQUEST_TIMEOUT + 5)
            assert not any(thread.is_alive() for thread in callers), "a caller is still waiting"

        assert not unexpected, unexpected
        assert slowest[0] <= REQUEST_TIMEOUT + 2.0, f"a caller waited {slowest[0]:.1f} s"
        assert stopped_in < 20
        assert {error.code for error in refused} <= {"UNAVAILABLE"}, {repr(e) for e in refused}
        with pool.connection() as conn:
            assert stored_order_ids(conn, acked) == set(acked), "an acknowledged order was not committed"
        assert_money_conserved(pool)
        assert_locked_equals_reserved(pool)
