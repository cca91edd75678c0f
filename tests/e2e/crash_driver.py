"""The engine under a kill -9 campaign: start an ActorSystem on a database and trade until killed.

    python tests/e2e/crash_driver.py DATABASE_URL ACK_FILE SEED [--threads N]

Several threads place a seeded random stream of orders (resting limits, crossing limits, stop limits,
market orders, cancels of their own resting orders) across several pairs and users. Right after each
acknowledgement (the reply comes only once the commit holding the command is done) a line is appended
to ACK_FILE and flushed with fsync, so the file never claims more than the engine acknowledged:

    place <order id> <status after the command>
    cancel <order id> CANCELLED

"ready" is printed on stdout once the system has started (recovery done). Runs until killed. The users
(1001-1004) and their deposits must exist already (the campaign creates them).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import threading
import time
from decimal import Decimal

from tradeengine.actors.exchange import OrderRequest
from tradeengine.actors.pair import CommandOutcome
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import OrderAccepted, OrderRejected, OrderType, Side, TradeEngineError, TradeExecuted
from tradeengine.storage import create_pool

USERS = (1001, 1002, 1003, 1004)
# symbol → (mid, price step, quantity)
PAIRS = {
    "BTC-USDT": (Decimal("50000"), Decimal("5"), Decimal("0.001")),
    "ETH-USDT": (Decimal("3000"), Decimal("1"), Decimal("0.01")),
    "SOL-USDT": (Decimal("150"), Decimal("0.05"), Decimal("0.1")),
}


class AckLog:
    """Appends acknowledgement lines durably (write + fsync per line), from many threads."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        data = (line + "\n").encode()
        with self._lock:
            os.write(self._fd, data)
            os.fsync(self._fd)


def status_after(outcome: CommandOutcome, order_id: str) -> str:
    """The order's status after the command, from its events (the last one that names it)."""
    status = "UNKNOWN"
    for event in outcome.events:
        if isinstance(event, TradeExecuted):
            if event.buyer_order_id == order_id:
                status = event.buyer_status.value
            elif event.seller_order_id == order_id:
                status = event.seller_status.value
        elif getattr(event, "order_id", None) == order_id and hasattr(event, "status"):
            status = event.status.value
    return status


def random_request(rng: random.Random, roll: float) -> OrderRequest:
    """Mostly resting limits; some stops (pending until the last price moves), markets and crosses."""
    symbol = rng.choice(list(PAIRS))
    mid, step, quantity = PAIRS[symbol]
    quantity *= rng.randint(1, 3)
    side = rng.choice((Side.BUY, Side.SELL))
    sign = -1 if side is Side.BUY else 1
    if roll < 0.8:  # resting limit
        return OrderRequest(symbol, side, OrderType.LIMIT, quantity=quantity,
                            price=mid + sign * step * rng.randint(1, 20))
    if roll < 0.85:  # a stop beyond the book's edge, resting as PENDING_TRIGGER until it triggers
        stop = mid - sign * step * rng.randint(3, 8)
        return OrderRequest(symbol, side, OrderType.STOP_LIMIT, quantity=quantity, price=stop,
                            stop_price=stop)
    if roll < 0.9:  # market: a sell by quantity, a buy by quote budget
        if side is Side.SELL:
            return OrderRequest(symbol, side, OrderType.MARKET, quantity=quantity)
        return OrderRequest(symbol, side, OrderType.MARKET, quote_quantity=quantity * mid)
    return OrderRequest(symbol, side, OrderType.LIMIT, quantity=quantity,  # crosses the spread
                        price=mid - sign * step * rng.randint(1, 5))


def trade(system: ActorSystem, acks: AckLog, seed: int) -> None:
    """One caller: place, cross and cancel at random, forever."""
    exchange = system.exchange
    rng = random.Random(seed)
    resting: list[tuple[int, str]] = []
    while True:
        user = rng.choice(USERS)
        roll = rng.random()
        try:
            if roll < 0.2 and resting:
                owner, order_id = resting.pop(rng.randrange(len(resting)))
                exchange.cancel(owner, order_id)
                acks.write(f"cancel {order_id} CANCELLED")
                continue
            outcome = exchange.place(user, random_request(rng, roll))
            first = outcome.events[0]
            assert isinstance(first, OrderAccepted | OrderRejected), first
            order_id = first.order_id
            status = status_after(outcome, order_id)
            acks.write(f"place {order_id} {status}")
            if status in ("OPEN", "PARTIALLY_FILLED", "PENDING_TRIGGER"):
                resting.append((user, order_id))
        except TradeEngineError:
            time.sleep(0.01)  # refused (not cancellable, restarting, ...): nothing was acknowledged


def main(argv: list[str]) -> int:
    """Start the system and trade until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("ack_file")
    parser.add_argument("seed", type=int)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--writer-process", action="store_true", help="the writer commits in its own process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool = create_pool(args.database_url, min_size=2, max_size=8)
    system = ActorSystem(pool, request_timeout=10.0, writer_process=args.writer_process)
    system.start()
    acks = AckLog(args.ack_file)
    print("ready", flush=True)
    threads = [threading.Thread(target=trade, args=(system, acks, args.seed * 1000 + n), daemon=True)
               for n in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
