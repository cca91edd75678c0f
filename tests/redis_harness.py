"""Redis for the tests: a key prefix of a test's own, and a private redis-server a test may kill.

Fixtures (registered for the whole suite by tests/conftest.py): ``redis_prefix`` (a unique key prefix;
its keys are deleted after the test) and ``private_redis`` (a started `PrivateRedis`, killed after).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import service_unavailable
from tests.e2e.conftest import free_port


class PrivateRedis:
    """A redis-server of the test's own (no persistence): it may be killed and started again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_unavailable("redis-server (the binary)", "PATH", "not found")
        self._binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._server: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server on its port; return once it answers PING."""
        self._server = subprocess.Popen(
            [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with contextlib.closing(redis.Redis.from_url(self.url)) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (it keeps nothing) and wait for it to be gone."""
        server, self._server = self._server, None
        if server is not None:
            server.kill()
            server.wait(timeout=10)


@pytest.fixture
def private_redis(redis_url: str) -> Iterator[PrivateRedis]:
    """A started private redis-server, killed afterwards."""
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of the test's own; its keys are deleted after the test."""
    prefix = f"tradeengine-test:{uuid.uuid4().hex}:"
    yield prefix
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
