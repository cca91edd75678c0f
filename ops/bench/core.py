"""Benchmark of the pure matching core: `trade-engine bench core [--json] [--commands N] [--runs K]`.

Standard workload (seeded, generated in full BEFORE any timing):
- one pair, BTC-USDT, tick 0.01, lot 0.0001, maker fee 0.1 %, taker fee 0.2 %, mid price 50 000.00;
- the book is pre-filled with 4 000 resting limit orders (not timed), 16 users;
- the timed stream (default 1 000 000 commands) is ~60 % limit orders around the mid (about 1 in 10
  marketable), ~25 % cancels of live resting orders, ~15 % taking orders (half MARKET, half IOC limits
  through the spread); the book stays at a few thousand resting orders;
- the funds gate grants every lock (`UnlimitedFunds`): the bench measures matching, not a wallet;
- Python's garbage collector runs with its default settings; the pre-generated command list is moved
  out of its scans with `gc.freeze()` (it belongs to the harness, not to the engine).
Cancel targets are chosen while generating by running the stream through a scratch engine, so every
cancel names a live order (replaying is deterministic, so the timed engine sees the same book).

Reported: commands/s and µs/command (median of `--runs` runs, each on a fresh pre-filled engine), and
bytes per resting order: tracemalloc's traced-memory growth while 20 000 non-crossing orders are added
to an empty engine, divided by 20 000 (counts everything the engine allocates: orders, levels, index
entries, lock amounts; excludes the order-id / user-id strings and price ints the caller already holds).
With --json the last printed line is one JSON object.

Timing: each run is timed with the process CPU clock (`time.process_time`), which is what one thread
costs, and with the wall clock; on a shared, loaded machine the wall figure also counts time spent waiting
for a CPU. `commands_per_sec` / `us_per_command` are the CPU-clock medians; `wall_*` keys give the rest.

Builds: a wheel install (`pip install .`) compiles the engine's `ACCELERATED_MODULES` with mypyc (see
setup.py; an editable install stays pure Python so that source edits always take effect), and the first
line printed says which build is imported (`engine: mypyc` or `engine: python`). `--accelerated` compiles
a copy of the current engine sources with mypyc into `--build-dir` (cached by source hash), then re-runs
this benchmark in a child process with that copy first on PYTHONPATH: the compiled figures from an
editable checkout. The same test suite runs on the compiled copy with
`PYTHONPATH=<build-dir>/<hash>/src pytest tests/engine`.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path

import tradeengine.engine.matching
from tradeengine.engine import (
    CancelOrder,
    Command,
    MatchingEngine,
    OrderType,
    PairSpec,
    PlaceOrder,
    Side,
    TimeInForce,
    UnlimitedFunds,
)

SPEC = PairSpec(
    symbol="BTC-USDT",
    base_asset="BTC",
    quote_asset="USDT",
    tick_size=Decimal("0.01"),
    lot_size=Decimal("0.0001"),
    min_quantity=Decimal("0.0001"),
    max_quantity=Decimal("1000"),
    min_notional=Decimal("1"),
    maker_fee=Decimal("0.001"),
    taker_fee=Decimal("0.002"),
)
MID = 5_000_000
PREFILL = 4_000
USERS = [f"user-{n}" for n in range(16)]
MEMORY_ORDERS = 20_000
# validation.py stays interpreted: compiled code casts a command's fields to their declared types as it
# reads them, so a float or str price would raise TypeError (and a bool pass as an int) instead of the
# VALIDATION_ERROR the rules give; validation runs only off the hot path. setup.py compiles the same list.
ACCELERATED_MODULES = (
    "book",
    "stops",
    "liquidity",
    "matching",
    "pair_state",
    "order",
    "lifecycle",
    "funds",
)


class Workload:
    """The seeded command stream and the pre-fill that comes before it."""

    def __init__(self, commands: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_id = 0
        self.prefill = [self._resting_limit(0) for _ in range(PREFILL)]
        self.commands = self._generate(commands)

    def _order_id(self) -> str:
        self.next_id += 1
        return f"o{self.next_id}"

    def _resting_limit(self, ts: int) -> PlaceOrder:
        side = Side.BUY if self.rng.random() < 0.5 else Side.SELL
        offset = 1 + int(self.rng.expovariate(1 / 60))
        price = MID - offset if side is Side.BUY else MID + offset
        return PlaceOrder(
            order_id=self._order_id(),
            user_id=self.rng.choice(USERS),
            side=side,
            order_type=OrderType.LIMIT,
            quantity=self.rng.randint(1, 50),
            price=price,
            timestamp=ts,
        )

    def _taking(self, ts: int) -> PlaceOrder:
        side = Side.BUY if self.rng.random() < 0.5 else Side.SELL
        quantity = self.rng.randint(1, 120)
        if self.rng.random() < 0.5:
            return PlaceOrder(
                order_id=self._order_id(),
                user_id=self.rng.choice(USERS),
                side=side,
                order_type=OrderType.MARKET,
                quantity=quantity,
                timestamp=ts,
            )
        price = MID + 40 if side is Side.BUY else MID - 40
        return PlaceOrder(
            order_id=self._order_id(),
            user_id=self.rng.choice(USERS),
            side=side,
            order_type=OrderType.LIMIT,
            quantity=quantity,
            price=price,
            time_in_force=TimeInForce.IOC,
            timestamp=ts,
        )

    def _generate(self, count: int) -> list[Command]:
        scratch = MatchingEngine(SPEC, UnlimitedFunds())
        for order in self.prefill:
            scratch.place(order)
        live = list(scratch.book.orders)
        commands: list[Command] = []
        rng = self.rng
        for ts in range(1, count + 1):
            roll = rng.random()
            command: Command
            if roll < 0.25 and live:
                command = self._cancel(scratch, live, ts)
            elif roll < 0.40:
                command = self._taking(ts)
            else:
                command = self._resting_limit(ts)
                if rng.random() < 0.1:  # marketable limit: crosses the spread by a little
                    price = command.price or MID
                    shift = 70 if command.side is Side.BUY else -70
                    command = PlaceOrder(
                        order_id=command.order_id,
                        user_id=command.user_id,
                        side=command.side,
                        order_type=OrderType.LIMIT,
                        quantity=command.quantity,
                        price=price + shift,
                        timestamp=ts,
                    )
                live.append(command.order_id)
            scratch.execute(command)
            commands.append(command)
        return commands

    def _cancel(self, scratch: MatchingEngine, live: list[str], ts: int) -> Command:
        orders = scratch.book.orders
        while live:
            index = self.rng.randrange(len(live))
            order_id = live[index]
            live[index] = live[-1]
            live.pop()
            order = orders.get(order_id)
            if order is not None:
                return CancelOrder(order_id=order_id, user_id=order.user_id, timestamp=ts)
        return self._resting_limit(ts)


def run_once(workload: Workload) -> tuple[float, float, int]:
    """Replay the workload on a fresh pre-filled engine; return (CPU s, wall s, resting orders at the end)."""
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    for order in workload.prefill:
        engine.place(order)
    execute = engine.execute
    commands = workload.commands
    gc.collect()
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for command in commands:
        execute(command)
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    return cpu, wall, len(engine.book.orders)


def bytes_per_resting_order(seed: int) -> float:
    """Measure traced memory growth per resting order added to an empty engine."""
    rng = random.Random(seed)
    commands = []
    for n in range(MEMORY_ORDERS):
        side = Side.BUY if n % 2 else Side.SELL
        offset = 1 + int(rng.expovariate(1 / 60))
        commands.append(
            PlaceOrder(
                order_id=f"m{n}",
                user_id=USERS[n % len(USERS)],
                side=side,
                order_type=OrderType.LIMIT,
                quantity=rng.randint(1, 50),
                price=MID - offset if side is Side.BUY else MID + offset,
            )
        )
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for command in commands:
        engine.place(command)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / len(engine.book.orders)


def engine_build() -> str:
    """Tell whether the imported engine is the mypyc-compiled copy or plain Python."""
    return "python" if tradeengine.engine.matching.__file__.endswith(".py") else "mypyc"


def build_accelerated(build_root: Path) -> Path:
    """Compile a copy of the engine with mypyc under build_root (cached by source hash); return src."""
    spec = importlib.util.find_spec("tradeengine.engine")
    assert spec is not None and spec.submodule_search_locations
    source_dir = Path(next(iter(spec.submodule_search_locations)))
    sources = sorted(source_dir.glob("*.py"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    src = build_root / digest / "src"
    package = src / "tradeengine" / "engine"
    if (package / ".built").exists():
        return src
    shutil.rmtree(build_root / digest, ignore_errors=True)
    package.mkdir(parents=True)
    for path in sources:
        shutil.copy2(path, package / path.name)
    targets = [f"tradeengine/engine/{name}.py" for name in ACCELERATED_MODULES]
    subprocess.run(
        [sys.executable, "-m", "mypyc", "--explicit-package-bases", *targets],
        cwd=src,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (package / ".built").write_text(digest)
    return src


def run_accelerated(argv: list[str], build_root: Path) -> int:
    """Build the mypyc copy and re-run this benchmark on it in a child process."""
    src = build_accelerated(build_root)
    child_argv = [a for a in argv if a != "--accelerated"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "tradeengine.ops.bench.core", *child_argv], env=env, check=False
    )
    return done.returncode


def main(argv: list[str]) -> int:
    """Run the core benchmark and print its figures (the last line is JSON with --json)."""
    from tradeengine.ops.bench import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog="trade-engine bench core", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--commands", type=int, default=1_000_000, help="timed commands per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is reported")
    parser.add_argument("--seed", type=int, default=20261124, help="workload seed")
    parser.add_argument("--accelerated", action="store_true", help="compile the engine with mypyc first")
    parser.add_argument("--build-dir", default="/tmp/trade-engine-mypyc", help="where --accelerated builds")
    args = parser.parse_args(argv)
    if args.commands <= 0 or args.runs <= 0:
        parser.error("--commands and --runs must be positive")
    if args.accelerated:
        return run_accelerated(argv, Path(args.build_dir))
    print(f"engine: {engine_build()}; generating {args.commands} commands (seed {args.seed}) ...", flush=True)
    workload = Workload(args.commands, args.seed)
    gc.collect()
    gc.freeze()  # the pre-generated command list is the harness's, not engine state: keep it out of GC scans
    cpu_times, wall_times = [], []
    resting = 0
    for run in range(1, args.runs + 1):
        cpu, wall, resting = run_once(workload)
        cpu_times.append(cpu)
        wall_times.append(wall)
        print(
            f"run {run}: {args.commands / cpu:,.0f} commands/s, {cpu * 1e6 / args.commands:.3f} µs/command"
            f" (CPU clock); wall clock {args.commands / wall:,.0f} commands/s"
        )
    result = summarise(args.commands, cpu_times, wall_times)
    result.update(
        commands=args.commands,
        runs=args.runs,
        seed=args.seed,
        engine_build=engine_build(),
        bytes_per_resting_order=round(bytes_per_resting_order(args.seed), 1),
        resting_orders_at_end=resting,
    )
    print(
        f"median of {args.runs}: {result['commands_per_sec']:,} commands/s,"
        f" {result['us_per_command']} µs/command (CPU clock; wall {result['wall_commands_per_sec']:,}/s);"
        f" {result['bytes_per_resting_order']} bytes per resting order; {resting} resting at end"
    )
    if args.json:
        print(json.dumps(result))
    return 0


def summarise(commands: int, cpu_times: list[float], wall_times: list[float]) -> dict[str, object]:
    """Return the median figures of several runs."""
    cpu, wall = statistics.median(cpu_times), statistics.median(wall_times)
    return {
        "commands_per_sec": round(commands / cpu),
        "us_per_command": round(cpu * 1e6 / commands, 3),
        "wall_commands_per_sec": round(commands / wall),
        "wall_us_per_command": round(wall * 1e6 / commands, 3),
    }


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
