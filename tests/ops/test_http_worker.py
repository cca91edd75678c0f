"""EngineWorker (ops/http_worker.py) under a real gunicorn, serving a small ASGI app over real HTTP.

The app reports where it runs (the loop's thread, the thread a blocking call ran on, the loop's class,
the client address it was given); ``/slow`` answers after a second, to be in flight when a stop signal
comes. A gunicorn config file's ``worker_exit`` hook appends the worker's pid to a file, which is how the
tests see that a worker left through ``worker_exit`` (where ``serve`` stops the actor system).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import free_port
from tradeengine.ops.gunicorn_conf import ENGINE_WORKER, WSGI_WORKER, gunicorn_options
from tradeengine.ops.http_worker import EngineWorker
from tradeengine.ops.settings import Settings
from tradeengine.ops.threadcpu import thread_role

APP = """
import asyncio, json, os, threading

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    if scope["path"] == "/stuck":
        await asyncio.sleep(3600)
    blocking = await asyncio.to_thread(lambda: threading.current_thread().name)
    body = json.dumps({
        "loop_thread": threading.current_thread().name, "blocking_thread": blocking,
        "loop": type(asyncio.get_running_loop()).__module__, "client": scope["client"][0],
        "pid": os.getpid(),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""

CONF = """
def worker_exit(server, worker):
    with open({exits!r}, "a") as f:
        f.write(f"{{worker.pid}}\\n")
"""


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    exits: Path

    def get(self, path: str = "/", headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse,
                                                                                   dict[str, Any]]:
        client = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            client.request("GET", path, headers=headers or {})
            response = client.getresponse()
            return response, json.loads(response.read())
        finally:
            client.close()

    def exited_workers(self) -> list[int]:
        return [int(line) for line in self.exits.read_text().split()] if self.exits.exists() else []

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
        output = self.process.communicate(timeout=30)[0].decode()
        assert "Traceback" not in output, output
        return output


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Gunicorn]:
    (tmp_path / "tinyapp.py").write_text(textwrap.dedent(APP))
    exits = tmp_path / "exits"
    (tmp_path / "conf.py").write_text(textwrap.dedent(CONF.format(exits=str(exits))))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--chdir", str(tmp_path), "-c", str(tmp_path / "conf.py"),
         "-k", ENGINE_WORKER, "--threads", "3", "--graceful-timeout", "6", "-b", f"127.0.0.1:{port}",
         "tinyapp:app"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    server = Gunicorn(process, port, exits)
    try:
        _wait_for(lambda: _listening(port) or process.poll() is not None, "gunicorn to listen")
        assert process.poll() is None, process.communicate()[0].decode()
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)


def test_the_app_runs_on_uvloop_in_the_http_loop_thread_and_blocks_on_http_blocking_threads(
        gunicorn: Gunicorn) -> None:
    response, seen = gunicorn.get("/")
    assert response.status == 200
    assert seen["loop"].startswith("uvloop")
    assert seen["loop_thread"] == "http-loop"
    assert seen["blocking_thread"].startswith("http-blocking")
    assert thread_role(seen["loop_thread"]) == thread_role(seen["blocking_thread"]) == "http"
    assert response.getheader("Server") is None
    gunicorn.stop()


def test_the_client_address_is_the_peer_not_x_forwarded_for(gunicorn: Gunicorn) -> None:
    _, seen = gunicorn.get("/", headers={"X-Forwarded-For": "203.0.113.9"})
    assert seen["client"] == "127.0.0.1"
    gunicorn.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_a_stop_signal_to_the_worker_finishes_in_flight_requests_and_leaves_through_worker_exit(
        gunicorn: Gunicorn, signum: int) -> None:
    _, first = gunicorn.get("/")
    worker = first["pid"]
    answers: list[int] = []
    request = threading.Thread(target=lambda: answers.append(gunicorn.get("/slow")[0].status))
    request.start()
    time.sleep(0.3)  # the slow request is in flight
    os.kill(worker, signum)
    request.join(timeout=15)
    assert answers == [200]
    _wait_for(lambda: worker in gunicorn.exited_workers(), "worker_exit of the signalled worker")
    gunicorn.stop()


def test_a_request_stuck_past_half_the_graceful_timeout_is_cancelled_and_the_worker_exits_cleanly(
        gunicorn: Gunicorn) -> None:
    _, first = gunicorn.get("/")
    answers: list[int] = []

    def stuck() -> None:
        client = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=30)
        client.request("GET", "/stuck")
        answers.append(client.getresponse().status)

    request = threading.Thread(target=stuck)
    request.start()
    time.sleep(0.3)
    started = time.monotonic()
    os.kill(first["pid"], signal.SIGTERM)
    _wait_for(lambda: first["pid"] in gunicorn.exited_workers(), "worker_exit of the stopping worker")
    assert time.monotonic() - started < 5.5  # cancelled at 3 s, before the master's 6 s SIGKILL
    request.join(timeout=10)
    assert answers == [500]
    gunicorn.process.terminate()
    output = gunicorn.process.communicate(timeout=30)[0].decode()
    assert output.count("Traceback") == 1, output  # uvicorn logs the request it cancelled
    assert "CancelledError: Task cancelled, timeout graceful shutdown exceeded" in output


def test_the_master_stopping_stops_the_worker_through_worker_exit(gunicorn: Gunicorn) -> None:
    _, first = gunicorn.get("/")
    output = gunicorn.stop()
    assert gunicorn.process.returncode == 0, output
    assert gunicorn.exited_workers() == [first["pid"]]


def test_the_worker_stops_by_itself_once_the_master_is_killed(gunicorn: Gunicorn) -> None:
    _, first = gunicorn.get("/")
    worker = psutil.Process(first["pid"])
    os.kill(gunicorn.process.pid, signal.SIGKILL)
    worker.wait(timeout=15)
    assert gunicorn.exited_workers() == [first["pid"]]


def test_serve_runs_the_engine_worker_and_the_wallet_service_gthread() -> None:
    from tradeengine.ops.walletservice.server import WalletServiceOptions
    from tradeengine.ops.walletservice.server import gunicorn_options as wallet_options

    assert gunicorn_options(Settings())["worker_class"] == ENGINE_WORKER
    module, _, name = ENGINE_WORKER.rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name) is EngineWorker
    assert wallet_options(WalletServiceOptions(), Settings())["worker_class"] == WSGI_WORKER == "gthread"
