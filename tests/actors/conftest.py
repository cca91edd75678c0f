"""Fixtures of the actor-system tests: a prepared database on the machine's PostgreSQL, a funded system.

A test module may define its own ``pool`` or ``system``; pytest then uses the module's.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg_pool
import pytest

from tests.actors.system_harness import database_pool, fund, prepare_database, running_system
from tradeengine.actors.system import ActorSystem


@pytest.fixture(params=[False, True], ids=["writer-thread", "writer-process"])
def writer_process(request: pytest.FixtureRequest) -> bool:
    """Both ways the writer commits: on the engine's thread, or in a process of its own (serve's default);
    a durability test that asks for this fixture runs in both."""
    return bool(request.param)


@pytest.fixture
def pool(machine_pg_url: str) -> Iterator[psycopg_pool.ConnectionPool]:
    """A pool on a fresh migrated database with the harness's traders."""
    prepare_database(machine_pg_url)
    with database_pool(machine_pg_url) as pool:
        yield pool


@pytest.fixture
def system(pool: psycopg_pool.ConnectionPool) -> Iterator[ActorSystem]:
    """A running actor system whose traders hold the harness's deposits."""
    with running_system(pool) as system:
        fund(system)
        yield system
