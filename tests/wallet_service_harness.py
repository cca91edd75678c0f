"""The reference wallet service as a real subprocess on a loopback port, for tests.

    with running_wallet_service(machine_pg_url) as wallet:
        wallet.deposit("1001", "USDT", "1000")
        ...                                   # the engine talks to wallet.url
        wallet.set_faults(fail_next=2, routes=["settle"])
        wallet.kill(); wallet.start()         # down and back, same port, same database
        assert wallet.balance("1001", "USDT") == (Decimal("1000"), Decimal("0"))

The service is ``trade-engine wallet-service --port P --database-url URL [--faults]`` exactly as an
operator runs it (gunicorn, one gthread worker). :meth:`WalletService.balance` reads the database
directly, so it answers while the service is down or while faults are injected; every other helper
goes over HTTP (``operation`` and ``/_faults`` are never subject to faults). The service's output goes to
a log file whose text :meth:`WalletService.log` returns (shown when a start fails).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import requests

#: Seconds ``start`` waits for /health before giving up.
START_TIMEOUT = 60.0
#: Seconds ``stop`` gives the service to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class WalletServiceError(AssertionError):
    """The wallet service did not start, or a helper call got an unexpected answer."""


class WalletService:
    """One wallet service subprocess (started again on the same port after ``stop``/``kill``)."""

    def __init__(self, database_url: str, *, faults: bool = True, port: int | None = None,
                 threads: int = 8) -> None:
        self.database_url = database_url
        self.faults = faults
        self.port = port if port is not None else free_port()
        self.threads = threads
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = Path(tempfile.mkstemp(prefix="wallet-service-", suffix=".log")[1])
        self._http = requests.Session()

    # -- process -------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The gunicorn master's pid while running."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self) -> None:
        """Start the service and return once /health answers 200 (raises WalletServiceError if not)."""
        if self.running:
            raise WalletServiceError("the wallet service is already running")
        command = [str(Path(sys.executable).with_name("trade-engine")), "wallet-service",
                   "--host", "127.0.0.1", "--port", str(self.port), "--database-url", self.database_url,
                   "--threads", str(self.threads)]
        if self.faults:
            command.append("--faults")
        env = {**os.environ, "TRADE_ENGINE_LOG_FORMAT": "text"}
        offset = self._log_path.stat().st_size
        with open(self._log_path, "ab") as log:
            # A session of its own: kill() takes the gunicorn master and its worker down together.
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise WalletServiceError(f"the wallet service exited with status {self._process.returncode} "
                                         f"while starting:\n{self.log()}")
            # Our own announcement first: /health alone might be answered by whoever else holds the port.
            if self._announced(offset):
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                        return
            time.sleep(0.1)
        self.kill()
        raise WalletServiceError(f"the wallet service did not answer /health within {START_TIMEOUT:g} s:\n"
                                 f"{self.log()}")

    def _announced(self, offset: int) -> bool:
        with open(self._log_path, "rb") as log:
            log.seek(offset)
            return f"wallet service listening on {self.url}".encode() in log.read()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop the service with SIGTERM (SIGKILL after ``timeout``); return its exit status."""
        process, self._process = self._process, None
        self._http.close()
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
        self._reap_group(process)
        return process.returncode

    def kill(self) -> None:
        """Kill the service at once (SIGKILL to its master and worker), as a crash would."""
        process, self._process = self._process, None
        self._http.close()
        if process is not None:
            self._kill_group(process)
            self._reap_group(process)

    def log(self) -> str:
        """Everything the service printed so far (over all its starts)."""
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the service if it runs and delete its log file."""
        self.stop()
        self._log_path.unlink(missing_ok=True)

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    @staticmethod
    def _reap_group(process: subprocess.Popen[bytes]) -> None:
        """Make sure no process of the service's session is left (a worker outliving its master)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, 0)
            os.killpg(process.pid, signal.SIGKILL)

    # -- HTTP helpers --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> requests.Response:
        return self._http.request(method, f"{self.url}{path}", json=body, timeout=10.0)

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """PUT /_faults with these fields (latency_ms, fail_status, fail_next, drop_next, after_apply,
        routes); return the service's view of them."""
        answer = self._call("PUT", "/_faults", faults)
        if answer.status_code != 200:
            raise WalletServiceError(f"PUT /_faults answered {answer.status_code}: {answer.text}")
        shown: dict[str, Any] = answer.json()["faults"]
        return shown

    def clear_faults(self) -> None:
        """DELETE /_faults: no more faults, counters back to zero."""
        answer = self._call("DELETE", "/_faults")
        if answer.status_code != 200:
            raise WalletServiceError(f"DELETE /_faults answered {answer.status_code}: {answer.text}")

    def fault_counters(self) -> dict[str, Any]:
        """The ``counters`` of GET /_faults (calls per route, delayed, failed, dropped)."""
        answer = self._call("GET", "/_faults")
        if answer.status_code != 200:
            raise WalletServiceError(f"GET /_faults answered {answer.status_code}: {answer.text}")
        counters: dict[str, Any] = answer.json()["counters"]
        return counters

    def operation(self, key: str) -> dict[str, Any] | None:
        """GET /v1/operations/{key}: the stored operation, or None when the key was never applied."""
        answer = self._call("GET", f"/v1/operations/{key}")
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise WalletServiceError(f"GET /v1/operations/{key} answered {answer.status_code}: {answer.text}")
        found: dict[str, Any] = answer.json()
        return found

    def deposit(self, user_id: str, asset: str, amount: str, key: str | None = None) -> dict[str, Any]:
        """POST /v1/deposit (a fresh idempotency key unless given); return the balance it answers."""
        body = {"idempotency_key": key or f"deposit-{uuid.uuid4().hex}", "user_id": user_id,
                "asset": asset, "amount": amount}
        answer = self._call("POST", "/v1/deposit", body)
        if answer.status_code != 200:
            raise WalletServiceError(f"POST /v1/deposit answered {answer.status_code}: {answer.text}")
        balance: dict[str, Any] = answer.json()["balance"]
        return balance

    def balance(self, user_id: str, asset: str) -> tuple[Decimal, Decimal]:
        """(available, locked) of the user's asset, read from the service's database (zero if none)."""
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT to_regclass('wallet_service.balances')").fetchone()
            if exists is None or exists[0] is None:
                return Decimal(0), Decimal(0)
            row = conn.execute(
                "SELECT available, locked FROM wallet_service.balances WHERE user_id = %s AND asset = %s",
                (user_id, asset)).fetchone()
        if row is None:
            return Decimal(0), Decimal(0)
        return Decimal(row[0]), Decimal(row[1])


@contextlib.contextmanager
def running_wallet_service(database_url: str, *, faults: bool = True) -> Iterator[WalletService]:
    """Run the wallet service on ``database_url`` for the block; it is stopped (killed if need be) after."""
    service = WalletService(database_url, faults=faults)
    try:
        service.start()
        yield service
    finally:
        service.close()
