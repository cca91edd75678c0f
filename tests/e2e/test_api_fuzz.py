"""Fuzzing: schemathesis generates requests for every operation of /openapi.json and sends them to a
real ``trade-engine serve``; no answer may be a 5xx and every answer must match the document (every
check of schemathesis but "schema-valid data is accepted", which a trading API refuses on purpose: an
unknown id is 404, a price off the tick 422).

Slow (a real server, many requests per operation):
``.venv/bin/python -m pytest -m slow tests/e2e/test_api_fuzz.py``.
Admin routes are called with the bootstrap admin's key, every other route with a funded trader's key,
so orders are really placed, matched and cancelled while the fuzzer runs.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import Engine, Engines

pytestmark = pytest.mark.slow

ADMIN_KEY = "te_" + "f" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclasses.dataclass(frozen=True)
class Server:
    engine: Engine
    trader: dict[str, str]  # the headers of a funded trader


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One engine on embedded PostgreSQL for the whole module, with a funded trader."""
    workdir = tmp_path_factory.mktemp("fuzz")
    engines = Engines(workdir)
    try:
        engine = engines.start(workdir / "data", bootstrap_admin_key=ADMIN_KEY, rate_limit="0")
        engine.wait_ready()
        created = requests.post(f"{engine.base}/api/v1/admin/users", headers=ADMIN,
                                json={"name": "fuzzer", "role": "trader"}, timeout=5)
        assert created.status_code == 201, created.text
        trader = {"Authorization": f"Bearer {created.json()['api_key']}"}
        user_id = created.json()["user"]["id"]
        for asset, amount in (("USDT", "100000000"), ("BTC", "1000"), ("ETH", "10000")):
            deposit = requests.post(f"{engine.base}/api/v1/admin/users/{user_id}/deposits", headers=ADMIN,
                                    json={"asset": asset, "amount": amount}, timeout=5)
            assert deposit.status_code == 201, deposit.text
        yield Server(engine, trader)
    finally:
        engines.cleanup()


def fuzz(server: Server, headers: dict[str, str], *filters: str, workdir: Path) -> None:
    """Run schemathesis' command line over the operations ``filters`` select; fail with its report."""
    header = f"Authorization:{headers['Authorization']}"
    schemathesis = str(Path(sys.executable).with_name("schemathesis"))
    # One worker: with two, hypothesis' lambda-source cache races ("AST constructor recursion depth
    # mismatch", a runtime error of the tool, not of the API).
    command = [schemathesis, "run", f"{server.engine.base}/openapi.json",
               "--header", header, "--checks", "all", "--exclude-checks", "positive_data_acceptance",
               "--max-examples", "40", "--seed", "20261124", "--workers", "1",
               "--suppress-health-check", "all", "--request-timeout", "10", *filters]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]


def test_no_trader_request_gets_a_5xx_and_every_answer_matches_the_document(
        server: Server, tmp_path: Path) -> None:
    fuzz(server, server.trader, "--exclude-path-regex", "^/api/v1/admin/", workdir=tmp_path)


def test_no_admin_request_gets_a_5xx_and_every_answer_matches_the_document(
        server: Server, tmp_path: Path) -> None:
    fuzz(server, ADMIN, "--include-path-regex", "^/api/v1/admin/", workdir=tmp_path)
