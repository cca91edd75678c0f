"""``trade-engine events tail`` as a real process against the machine's RabbitMQ.

Each test publishes with the engine's own publisher (`EventPublisher`) to an exchange of its own (deleted
afterwards) while the command listens; the command's temporary queue goes away with its connection.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kombu import Connection, Exchange

from tests.e2e.conftest import free_port
from tradeengine.storage.outbox import OutboxRow, StoredEvent
from tradeengine.storage.publisher import EventPublisher


def _env(cwd: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_ENGINE_")}
    env.update({f"TRADE_ENGINE_{key.upper()}": value for key, value in settings.items()})
    env.setdefault("TRADE_ENGINE_DATA_DIR", str(cwd / "data"))
    return env


class Tail:
    """``trade-engine events tail ARGS`` running in the background."""

    def __init__(self, cwd: Path, args: list[str], *, sigint: Any = signal.SIG_DFL, **settings: str) -> None:
        """``sigint``: the SIGINT disposition the process inherits (SIG_IGN: started like a background job
        of a shell without job control)."""
        self.stderr_path = cwd / f"tail-{uuid.uuid4().hex[:6]}.stderr"
        with self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tradeengine.ops.cli", "events", "tail", *args],
                env=_env(cwd, **settings), cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
            )

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while "listening on exchange" not in self.stderr_path.read_text():
            assert self.process.poll() is None, f"events tail exited: {self.stderr_path.read_text()}"
            assert time.monotonic() < deadline, "events tail did not bind its queue in time"
            time.sleep(0.05)

    def finish(self, timeout: float = 20.0) -> tuple[int, list[str]]:
        out, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, out.splitlines()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)  # reaps it and closes its stdout pipe


@pytest.fixture
def exchange_name(broker_url: str) -> Iterator[str]:
    name = f"te-test-{uuid.uuid4().hex[:12]}"
    yield name
    with Connection(broker_url, connect_timeout=5) as connection:
        Exchange(name, type="topic")(connection.channel()).delete()


@pytest.fixture
def tails() -> Iterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        tail.kill()


def event(kind: str, symbol: str | None, sequence: int | None, routing_key: str,
          **payload: Any) -> StoredEvent:
    body = {"symbol": symbol, "sequence": sequence, "timestamp": "2026-11-24T10:00:00.000001Z", **payload}
    return StoredEvent(str(uuid.uuid4()), kind, routing_key, sequence, msgspec.Raw(json.dumps(body).encode()))


def publish(broker_url: str, exchange: str, events: list[StoredEvent], symbol: str | None) -> None:
    publisher = EventPublisher(broker_url, exchange)
    try:
        row = OutboxRow(1, symbol, None, None, events, datetime.now(UTC))
        publisher.publish_row(row)
    finally:
        publisher.close()


def test_tail_prints_one_json_line_per_event_of_the_chosen_pair_in_publish_order(
    broker_url: str, exchange_name: str, tails: list[Tail], tmp_path: Path,
) -> None:
    tail = Tail(tmp_path, ["--symbol", "BTC-USDT", "--json", "--limit", "3"], broker_url=broker_url,
                broker_exchange=exchange_name)
    tails.append(tail)
    tail.wait_listening()
    btc = [
        event("order.accepted", "BTC-USDT", 5, "order.BTC-USDT.OPEN", order_id="1", status="OPEN"),
        event("balance.changed", "BTC-USDT", 5, "balance.BTC", asset="BTC"),
    ]
    eth = [
        event("order.accepted", "ETH-USDT", 9, "order.ETH-USDT.OPEN", order_id="2", status="OPEN"),
        event("balance.changed", "ETH-USDT", 9, "balance.USDT", asset="USDT"),
    ]
    trade = [event("trade.executed", "BTC-USDT", 6, "trade.BTC-USDT", id="BTC-USDT:6")]
    publish(broker_url, exchange_name, btc, "BTC-USDT")
    publish(broker_url, exchange_name, eth, "ETH-USDT")
    publish(broker_url, exchange_name, trade, "BTC-USDT")

    status, lines = tail.finish()
    assert status == 0
    printed = [json.loads(line) for line in lines]
    assert [e["event_id"] for e in printed] == [e.event_id for e in [*btc, *trade]]
    assert [e["event_type"] for e in printed] == ["order.accepted", "balance.changed", "trade.executed"]
    assert list(printed[0]) == ["event_id", "event_type", "symbol", "sequence", "occurred_at", "payload"]
    assert printed[0]["payload"]["order_id"] == "1"


def test_tail_of_one_kind_binds_only_that_kind_and_prints_readable_lines_without_json(
    broker_url: str, exchange_name: str, tails: list[Tail], tmp_path: Path,
) -> None:
    tail = Tail(tmp_path, ["--type", "trade", "--limit", "1"], broker_url=broker_url,
                broker_exchange=exchange_name)
    tails.append(tail)
    tail.wait_listening()
    publish(broker_url, exchange_name, [
        event("order.accepted", "SOL-USDT", 3, "order.SOL-USDT.OPEN", order_id="3", status="OPEN"),
        event("trade.executed", "SOL-USDT", 4, "trade.SOL-USDT", id="SOL-USDT:4"),
    ], "SOL-USDT")

    status, lines = tail.finish()
    assert status == 0
    assert len(lines) == 1
    assert lines[0].startswith("2026-11-24T10:00:00.000001Z  trade.executed")
    assert "SOL-USDT" in lines[0] and "seq 4" in lines[0] and '"id":"SOL-USDT:4"' in lines[0]


@pytest.mark.parametrize(("stop", "inherited"), [
    (signal.SIGINT, signal.SIG_DFL), (signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, signal.SIG_DFL),
], ids=["ctrl-c", "ctrl-c-started-with-sigint-ignored", "sigterm"])
def test_ctrl_c_or_sigterm_ends_the_tail_quietly(
    broker_url: str, exchange_name: str, tails: list[Tail], tmp_path: Path, stop: signal.Signals,
    inherited: Any,
) -> None:
    tail = Tail(tmp_path, [], sigint=inherited, broker_url=broker_url, broker_exchange=exchange_name)
    tails.append(tail)
    tail.wait_listening()
    tail.process.send_signal(stop)
    status, lines = tail.finish()
    assert status == 0
    assert lines == []
    assert "Traceback" not in tail.stderr_path.read_text()


def test_tail_warns_when_the_exchange_did_not_exist_and_is_quiet_when_it_did(
    broker_url: str, exchange_name: str, tails: list[Tail], tmp_path: Path,
) -> None:
    first = Tail(tmp_path, [], broker_url=broker_url, broker_exchange=exchange_name)
    tails.append(first)
    first.wait_listening()
    warning = first.stderr_path.read_text()
    assert f"warning: the broker had no exchange '{exchange_name}'" in warning
    assert "TRADE_ENGINE_BROKER_EXCHANGE" in warning
    second = Tail(tmp_path, [], broker_url=broker_url, broker_exchange=exchange_name)  # exists now
    tails.append(second)
    second.wait_listening()
    assert "warning" not in second.stderr_path.read_text()


@pytest.mark.parametrize("limit", ["0", "-1", "x"])
def test_tail_refuses_a_limit_below_one(tmp_path: Path, limit: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tradeengine.ops.cli", "events", "tail", "--limit", limit],
                            env=_env(tmp_path, broker_url="amqp://guest:guest@127.0.0.1:1//"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--limit" in result.stderr and result.stdout == ""


def test_tail_refuses_the_in_process_memory_broker(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tradeengine.ops.cli", "events", "tail"],
                            env=_env(tmp_path, broker_url="memory://"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "memory://" in result.stderr and result.stdout == ""


def test_tail_says_in_one_line_when_no_broker_answers(tmp_path: Path) -> None:
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}//"
    result = subprocess.run([sys.executable, "-m", "tradeengine.ops.cli", "events", "tail"],
                            env=_env(tmp_path, broker_url=url), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "broker" in lines[0], result.stderr
    assert "secret" not in result.stderr
