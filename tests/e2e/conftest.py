"""Run real ``trade-engine serve`` processes on free loopback ports, each with its own data folder.

Every process started here is killed at teardown even when the test failed, and so is every
PostgreSQL process of the test's data folders: a failing test never leaves a server behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest
import requests

STARTUP_LIMIT = 15.0  # seconds from spawn to /health and /ready answering 200 (the contract)
STOP_LIMIT = 30.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """Live PostgreSQL processes of the cluster in ``data_dir`` (by command line or working folder)."""
    target = str(data_dir.resolve())
    found = []
    for process in psutil.process_iter(["name", "cmdline", "cwd", "status"]):
        info = process.info
        if info["name"] != "postgres" or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(target in part for part in info["cmdline"] or ()) or (info["cwd"] or "").startswith(target):
            found.append(process)
    return found


def gone(pid: int) -> bool:
    """True when the process has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str, pause: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:g} s")
        time.sleep(pause)


def engine_env(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of an engine: ours without TRADE_ENGINE_* settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_ENGINE_")}
    env.update({
        "TRADE_ENGINE_DATA_DIR": str(data_dir),
        "TRADE_ENGINE_HTTP_HOST": "127.0.0.1",
        "TRADE_ENGINE_HTTP_PORT": str(port),
        "TRADE_ENGINE_HTTP_THREADS": "4",
        "TRADE_ENGINE_LOG_FORMAT": "json",
        "TRADE_ENGINE_DATABASE_POOL_SIZE": "2",
    })
    env.update({f"TRADE_ENGINE_{key.upper()}": value for key, value in settings.items()})
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``trade-engine ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "tradeengine.ops.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


class Engine:
    """One ``trade-engine serve`` subprocess (the gunicorn master) and its output files."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str) -> None:
        self.port = int(env["TRADE_ENGINE_HTTP_PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tradeengine.ops.cli", "serve"], env=env, cwd=workdir,
                stdout=out, stderr=err, start_new_session=True,
            )
        self.pid = self.process.pid

    def get(self, path: str, timeout: float = 5.0) -> requests.Response:
        return requests.get(self.base + path, timeout=timeout)

    def wait_ready(self, limit: float = STARTUP_LIMIT) -> float:
        """Wait until /health and /ready answer 200; return the seconds it took from now."""
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.stderr()}")
            with contextlib.suppress(requests.RequestException):
                if self.get("/health", 1).status_code == 200 and self.get("/ready", 3).status_code == 200:
                    return time.monotonic() - started
            if time.monotonic() - started > limit:
                raise AssertionError(f"not ready within {limit:g} s:\n{self.stderr()}")
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return [child.pid for child in psutil.Process(self.pid).children()
                    if child.name() != "postgres"]
        return []

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the whole foreground process group."""
        os.killpg(self.pid, signal.SIGINT)

    def wait_exit(self, timeout: float = STOP_LIMIT) -> int:
        return self.process.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.stderr().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def kill_everything(self) -> None:
        """Teardown: SIGKILL the master's whole process group if anything of it still runs."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


class Engines:
    """Starts engines for one test and cleans all of them (and their PostgreSQL) up afterwards."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Engine] = []
        self.data_dirs: set[Path] = set()

    def start(self, data_dir: Path, port: int | None = None, **settings: str) -> Engine:
        self.data_dirs.add(data_dir)
        env = engine_env(data_dir, port or free_port(), **settings)
        engine = Engine(self.workdir, env, f"engine{len(self.started)}")
        self.started.append(engine)
        return engine

    def cleanup(self) -> None:
        for engine in self.started:
            engine.kill_everything()
        for data_dir in self.data_dirs:
            leftovers = postgres_processes(data_dir)
            for process in leftovers:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            psutil.wait_procs(leftovers, timeout=10)


class TcpProxy:
    """A loopback TCP proxy to ``target`` that a test can cut (no listener, every connection closed)
    and restore (listening again on the same port), or hang (connections stay open and nothing passes
    either way: a server that hangs, or a black-holed network) and let flow again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self.restore()

    @classmethod
    def before(cls, url: str, default_port: int) -> TcpProxy:
        """A proxy in front of the service at `url` (its port, or `default_port`)."""
        parts = urlsplit(url)
        return cls((parts.hostname or "127.0.0.1", parts.port or default_port))

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's (user and password kept)."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def hang(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                self._flowing.wait()
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def pg_proxy(machine_pg_admin_url: str) -> Iterator[TcpProxy]:
    """A cuttable proxy in front of the machine's PostgreSQL."""
    proxy = TcpProxy.before(machine_pg_admin_url, 5432)
    try:
        yield proxy
    finally:
        proxy.cut()
