"""KeepAliveThreadWorker (ops/http_worker.py): gthread answering a keep-alive client's next request on the
same thread, never at the expense of a connection waiting for a thread.

The loop is tested with gthread's one-request `handle` replaced by a recorder (the layer below); the
worker itself is tested in a real gunicorn, with more keep-alive clients than threads.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.workers.gthread import ThreadWorker

from tradeengine.ops import http_worker
from tradeengine.ops.gunicorn_conf import WORKER_CLASS
from tradeengine.ops.http_worker import KeepAliveThreadWorker

from ..wallet_service_harness import free_port

# -- the loop, against a recorder of gthread's one-request handle -----------------------------------------


class _Buffer:
    def __init__(self) -> None:
        self.data = b""

    def getvalue(self) -> bytes:
        return self.data


class _Conn:
    """What `handle` looks at: the socket (one end of a socketpair) and the parser's read-ahead buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = type("Parser", (), {"unreader": type("Unreader", (), {"buf": _Buffer()})()})()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def _worker(
    monkeypatch: pytest.MonkeyPatch, answers: list[Any], read: threading.Semaphore | None = None,
) -> tuple[Any, list[int]]:
    """A worker whose gthread `handle` reads one request and answers `answers` in turn (True: keep-alive);
    `read`, if given, is released after each request is read."""
    worker = object.__new__(KeepAliveThreadWorker)  # no gunicorn arbiter, config or pool: only the loop
    worker._queued = 1  # the connection this handle call was submitted for
    worker._queued_lock = threading.Lock()
    worker.alive = True
    handled: list[int] = []

    def one_request(self: Any, conn: Any) -> Any:
        handled.append(len(handled))
        conn.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            conn.sock.recv(4096)  # what the parser would read: the request
        if read is not None:
            read.release()
        return answers[len(handled) - 1]

    monkeypatch.setattr(ThreadWorker, "handle", one_request)
    return worker, handled


def test_the_next_request_of_a_keep_alive_client_is_answered_on_the_same_thread(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    read = threading.Semaphore(0)
    worker, handled = _worker(monkeypatch, [True, True, False], read)
    # The client's next requests arrive while the thread waits for them: each one after the previous was
    # read (two sends before one read would be one request to the recorder), within a wait long enough
    # that a loaded machine's scheduling cannot make them late.
    monkeypatch.setattr(http_worker, "KEEP_WAIT", 5.0)
    client.sendall(b"GET /1")

    def send_more() -> None:
        for n in (2, 3):
            assert read.acquire(timeout=10)
            client.sendall(f"GET /{n}".encode())

    sender = threading.Thread(target=send_more)
    sender.start()
    result = worker.handle(_Conn(server))
    sender.join()
    assert handled == [0, 1, 2]  # three requests in one call; the last one closes the connection
    assert result is False
    assert worker._queued == 0


def test_a_client_that_pauses_goes_back_to_the_poller(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    worker, handled = _worker(monkeypatch, [True, True])
    client.sendall(b"GET /1")
    started = time.monotonic()
    assert worker.handle(_Conn(server)) is True  # keep-alive: gthread puts it in the poller
    assert handled == [0]
    assert time.monotonic() - started >= http_worker.KEEP_WAIT * 0.9


def test_a_request_read_ahead_by_the_parser_is_answered_without_waiting(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _client = pair
    worker, handled = _worker(monkeypatch, [True, False])
    conn = _Conn(server)
    conn.parser.unreader.buf.data = b"GET /2 HTTP/1.1\r\n"  # pipelined behind the first request
    assert worker.handle(conn) is False
    assert handled == [0, 1]


@pytest.mark.parametrize("why", ["another connection waits for a thread", "the worker is stopping"])
def test_the_thread_answers_one_request_and_lets_go_of_a_busy_client_when(
    why: str, monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    worker, handled = _worker(monkeypatch, [True, True])
    if why.startswith("another"):
        worker._queued = 2  # this connection, and one more waiting in the pool's queue
    else:
        worker.alive = False
    client.sendall(b"GET /1GET /2")  # its next request is here already
    assert worker.handle(_Conn(server)) is True  # it goes through the poller (gthread answers it later)
    assert handled == [0]
    assert worker._queued == (1 if why.startswith("another") else 0)


# -- a real gunicorn --------------------------------------------------------------------------------------

APP = """
import os, threading

def app(environ, start_response):
    body = f"{environ['REMOTE_PORT']} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.fixture
def gunicorn_server(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "tinyapp.py").write_text(textwrap.dedent(APP))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--chdir", str(tmp_path), "-k", WORKER_CLASS, "--threads", "2",
         "--keep-alive", "5", "-b", f"127.0.0.1:{port}", "tinyapp:app"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.communicate()[0].decode()
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
        assert process.returncode == 0, output
        assert "Traceback" not in output, output


def test_more_keep_alive_clients_than_threads_are_all_answered_on_their_own_connections(
    gunicorn_server: int,
) -> None:
    clients = [http.client.HTTPConnection("127.0.0.1", gunicorn_server, timeout=10) for _ in range(6)]
    ports: list[set[str]] = [set() for _ in clients]
    try:
        for _ in range(15):  # round robin: each client's next request comes while the others wait
            for n, client in enumerate(clients):
                client.request("GET", "/")
                response = client.getresponse()
                assert response.status == 200
                ports[n].add(response.read().decode().split()[0])
                assert response.getheader("Connection", "keep-alive").lower() != "close"
    finally:
        for client in clients:
            client.close()
    # Each client kept one connection throughout (http.client would reconnect after a close).
    assert all(len(seen) == 1 for seen in ports)
    assert len(set().union(*ports)) == 6


def test_serve_runs_the_keep_alive_worker() -> None:
    from tradeengine.ops.gunicorn_conf import gunicorn_options
    from tradeengine.ops.settings import Settings

    assert gunicorn_options(Settings())["worker_class"] == WORKER_CLASS
    module, _, name = WORKER_CLASS.rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name) is KeepAliveThreadWorker
