"""The Prometheus configuration in ops/prometheus, checked by the real promtool (Debian package
``prometheus``): the scrape config and the alert rules are valid, the rules' unit tests pass, every alert
has a unit test that fires it and one that keeps it quiet, and each of those fails once the rule is gone
or always fires. The rules select only metrics a live engine exports, and the database alert's signal
really moves while the engine's database is unreachable.

Without promtool the promtool tests skip, saying so; with TRADE_ENGINE_REQUIRE_SERVICES=1 they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import _scratch_database, services_required
from tests.e2e.conftest import TcpProxy
from tests.ops.metrics_harness import ORDERS, Engine, Samples, running_engine, value
from tests.ops.test_grafana_dashboard import metric_names
from tests.wallet_service_harness import running_wallet_service

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "ops" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"
JOB = "trade-engine"
#: Alerts the deployment must have (issue #8), by what they watch.
REQUIRED_ALERTS = {
    "engine down": "TradeEngineDown",
    "high p99 order latency": "TradeEngineOrderLatencyHigh",
    "5xx rate": "TradeEngineHttp5xxRate",
    "actor restarts": "TradeEngineActorRestarting",
    "a failed pair": "TradeEnginePairFailed",
    "outbox lag": "TradeEngineOutboxLag",
    "database unavailable": "TradeEngineDatabaseUnavailable",
}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES)["groups"] for rule in group["rules"]]


def _seconds(duration: str) -> float:
    """A Prometheus duration (``1m30s``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (Debian/Ubuntu package `prometheus`; .ci/run installs it)"
        if services_required():
            pytest.fail(f"{message} (TRADE_ENGINE_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(f"{message} (set TRADE_ENGINE_REQUIRE_SERVICES=1 to fail instead)")
    return found


def _run(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def test_promtool_accepts_the_scrape_config_and_the_rules(promtool: str) -> None:
    config = _run(promtool, "check", "config", CONFIG.name)
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _run(promtool, "check", "rules", RULES.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in rules.stdout


def test_the_rules_unit_tests_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_deployed_config_loads_exactly_the_tested_rules_and_scrapes_the_job_they_select() -> None:
    config = _load(CONFIG)
    tests = _load(RULE_TESTS)
    assert config["rule_files"] == tests["rule_files"] == [RULES.name]
    assert [job["job_name"] for job in config["scrape_configs"]].count(JOB) == 1
    assert _seconds(tests["evaluation_interval"]) == _seconds(config["global"]["evaluation_interval"])


def test_there_is_an_alert_for_each_thing_the_deployment_must_watch_and_each_is_complete() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    assert set(REQUIRED_ALERTS.values()) <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]


def test_every_metric_selector_of_the_rules_is_scoped_to_the_engines_job() -> None:
    for rule in _rules():
        selectors = re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", rule["expr"])
        assert selectors, rule["alert"]
        for name, matchers in selectors:
            assert f'job="{JOB}"' in matchers, f"{rule['alert']}: {name}{{{matchers}}}"


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = _load(RULE_TESTS)["tests"]
    return cases


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_quiet_after_its_for() -> None:
    for rule in _rules():
        alert = rule["alert"]
        hold = _seconds(rule.get("for", "0s"))
        fired = [case["name"] for case in _cases() for check in case["alert_rule_test"]
                 if check["alertname"] == alert and check["exp_alerts"]]
        quiet = [case["name"] for case in _cases() for check in case["alert_rule_test"]
                 if check["alertname"] == alert and not check["exp_alerts"]
                 and _seconds(check["eval_time"]) >= hold + 60 and case["name"] not in fired]
        assert fired, f"{alert}: no unit test fires it"
        assert quiet, f"{alert}: no unit test keeps it quiet once its `for` ({hold:g} s) has passed"


Check = tuple[str, str, float]  # a unit test case's name, the alert it checks, at which second


def _checks(firing: bool) -> set[Check]:
    """The alert checks of the unit tests that expect alerts (``firing``) or expect none."""
    return {(case["name"], check["alertname"], _seconds(check["eval_time"])) for case in _cases()
            for check in case["alert_rule_test"] if bool(check["exp_alerts"]) == firing}


def _failed_checks(promtool: str, rules: list[dict[str, Any]], workdir: Path) -> set[Check]:
    """Run the unit tests against ``rules`` instead of the shipped ones; the alert checks that fail."""
    workdir.mkdir()
    (workdir / RULES.name).write_text(yaml.safe_dump({"groups": [{"name": "mutated", "rules": rules}]}))
    shutil.copy(RULE_TESTS, workdir / RULE_TESTS.name)
    result = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=workdir)
    failed = {(name, alert, _seconds(at)) for name, alert, at in re.findall(
        r"^\s*name: (.+),\n\s*alertname: (\w+), time: (\w+),", result.stdout + result.stderr, re.M)}
    assert (result.returncode != 0) == bool(failed), result.stdout + result.stderr
    return failed


def test_each_firing_check_fails_without_its_rule_and_each_quiet_check_with_a_rule_that_always_fires(
        promtool: str, tmp_path: Path) -> None:
    # A check of alert X only sees X's rule, so mutating every rule at once tells about each check.
    placeholder = {"record": "placeholder", "expr": "vector(0)"}
    without = _failed_checks(promtool, [placeholder], tmp_path / "without")
    assert _checks(firing=True) <= without, sorted(_checks(firing=True) - without)
    always = [{**rule, "expr": "vector(1)", "for": "0s"} for rule in _rules()]
    noisy = _failed_checks(promtool, always, tmp_path / "always")
    assert _checks(firing=False) <= noisy, sorted(_checks(firing=False) - noisy)


def _trade_and_scrape(engine: Engine) -> set[str]:
    alice = engine.trader(BTC="1")
    bob = engine.trader(USDT="100000")
    engine.place(alice, 201, side="SELL", quantity="0.5", price="50000")
    engine.place(bob, 201, side="BUY", quantity="0.1", price="50000")
    samples = engine.settled(lambda s: value(s, "trade_engine_http_requests_total", route=ORDERS,
                                             method="POST", status="201") >= 2)
    return {name for name, _ in samples}


@pytest.fixture(scope="module")
def exported(machine_pg_admin_url: str) -> Iterator[set[str]]:
    """The series names live engines (the real worker, real PostgreSQL) export after some trading: one
    on the built-in wallet and one on a remote wallet service (whose gauges only it exports)."""
    names: set[str] = set()
    for url in _scratch_database(machine_pg_admin_url):
        with running_engine(url) as engine:
            names |= _trade_and_scrape(engine)
    for url in _scratch_database(machine_pg_admin_url):
        with running_wallet_service(url) as wallet, running_engine(url, wallet_url=wallet.url) as engine:
            deadline = time.monotonic() + 10
            while not engine.parts.system.wallet_reconciled():
                assert time.monotonic() < deadline, "the wallet service never reconciled"
                time.sleep(0.05)
            remote = _trade_and_scrape(engine)
    assert "trade_engine_wallet_settlement_lag_seconds" in remote
    assert "trade_engine_wallet_settlement_lag_seconds" not in names  # built in: no wallet gauges
    yield names | remote


def test_every_metric_the_rules_select_is_exported_by_the_live_engine(exported: set[str]) -> None:
    missing = [f"{rule['alert']}: {name}" for rule in _rules()
               for name in sorted(metric_names(rule["expr"]) - exported - {"up"})]
    assert not missing, "\n".join(missing)
    assert "trade_engine_outbox_publish_lag_seconds" in exported  # read from the database at scrape time


def _outbox_figures(samples: Samples) -> tuple[float, bool]:
    """The outbox read errors so far, and whether this scrape had the outbox gauges."""
    return (value(samples, "trade_engine_scrape_errors_total", source="outbox"),
            ("trade_engine_outbox_publish_lag_seconds", frozenset()) in samples)


def test_the_database_alerts_signal_counts_every_scrape_while_the_database_is_unreachable(
        machine_pg_url: str) -> None:
    proxy = TcpProxy.before(machine_pg_url, 5432)
    through = proxy.url(machine_pg_url)
    ttl = 5.0  # build_worker's OutboxCollector reads the database at most once per 5 s
    try:
        with running_engine(through) as engine:
            errors, present = _outbox_figures(engine.scrape())
            assert (errors, present) == (0, True)
            proxy.cut()
            for failed in (1, 2):
                time.sleep(ttl + 0.2)
                assert _outbox_figures(engine.scrape()) == (failed, False)
            proxy.restore()
            deadline = time.monotonic() + 30
            while not (figures := _outbox_figures(engine.scrape()))[1]:
                assert time.monotonic() < deadline, "the outbox gauges did not come back with the database"
                time.sleep(0.5)
            assert figures[0] >= 2  # a counter: the failures stay counted
    finally:
        proxy.cut()
