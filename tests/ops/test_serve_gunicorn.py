"""gunicorn runs as ops/gunicorn_conf.py says: one worker (the engine's), no control socket, no access log,
and the worker's parts (pool, actor system, app) are built only when the worker loads the app."""

from __future__ import annotations

import falcon.testing
import pytest

from tradeengine.ops.gunicorn_conf import ENGINE_WORKER, bind_address, gunicorn_options, post_worker_init
from tradeengine.ops.logconfig import GunicornLogger
from tradeengine.ops.server import EngineApplication, build_worker, readiness_checks
from tradeengine.ops.settings import Settings


def test_gunicorn_config_has_one_engine_worker_no_control_socket_and_no_access_log() -> None:
    settings = Settings(http_host="127.0.0.1", http_port=18123, http_threads=7, log_level="WARNING")
    application = EngineApplication(settings, "postgresql://unused@127.0.0.1/x")
    cfg = application.cfg
    assert cfg.workers == 1
    assert cfg.worker_class_str == ENGINE_WORKER == "tradeengine.ops.http_worker.EngineWorker"
    assert cfg.threads == 7
    assert cfg.control_socket_disable is True
    assert cfg.accesslog is None
    assert cfg.preload_app is False
    assert cfg.bind == ["127.0.0.1:18123"]
    assert cfg.graceful_timeout == 16  # half of it outlasts the longest request (5 s + 2 s, and 1 s)
    assert cfg.logger_class is GunicornLogger
    assert cfg.loglevel == "warning"
    assert cfg.post_worker_init is post_worker_init
    assert application.callable is None  # nothing of the app exists until a worker loads it


def test_bind_address_brackets_ipv6() -> None:
    assert bind_address("::1", 80) == "[::1]:80"
    assert bind_address("0.0.0.0", 80) == "0.0.0.0:80"


def test_every_option_is_a_known_gunicorn_setting() -> None:
    from gunicorn.config import KNOWN_SETTINGS

    known = {setting.name for setting in KNOWN_SETTINGS}
    assert set(gunicorn_options(Settings())) <= known


def test_redis_and_broker_are_checked_only_when_configured() -> None:
    class System:
        running = True

    plain = readiness_checks(Settings(), pool=None, system=System())  # type: ignore[arg-type]
    assert list(plain) == ["database", "actors"]
    full = readiness_checks(Settings(redis_url="redis://127.0.0.1:6379/0",
                                     broker_url="amqp://guest:guest@127.0.0.1:5672//"),
                            pool=None, system=System())  # type: ignore[arg-type]
    assert list(full) == ["database", "redis", "broker", "actors"]


def test_the_worker_builds_pool_actor_system_and_app_and_closes_them(machine_pg_url: str) -> None:
    from tradeengine.storage.migrate import apply_migrations

    apply_migrations(machine_pg_url)
    parts = build_worker(Settings(database_pool_size=2), machine_pg_url)
    try:
        assert parts.system.running
        client = falcon.testing.TestClient(parts.app)
        assert client.simulate_get("/ready").json == {"status": "ready",
                                                      "checks": {"database": "ok", "actors": "ok"}}
        assert "process_cpu_seconds_total" in client.simulate_get("/metrics").text
    finally:
        parts.close()
    assert not parts.system.running
    assert parts.pool.closed


@pytest.mark.parametrize("size", [1, 3])
def test_pool_size_follows_the_setting(machine_pg_url: str, size: int) -> None:
    from tradeengine.storage.migrate import apply_migrations

    apply_migrations(machine_pg_url)
    parts = build_worker(Settings(database_pool_size=size), machine_pg_url)
    try:
        assert parts.pool.max_size == size
    finally:
        parts.close()


def test_stop_signals_make_the_worker_stop_gracefully() -> None:
    import signal

    class Worker:
        def handle_exit(self, sig: int, frame: object) -> None:
            raise AssertionError("not called here")

    worker = Worker()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        post_worker_init(worker)
        assert signal.getsignal(signal.SIGINT) == worker.handle_exit
        assert signal.getsignal(signal.SIGQUIT) == worker.handle_exit
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
