"""The Grafana provisioning and dashboard in ops/grafana: every query names metrics a live engine exports.

The engine is the real worker (``build_worker``) on a real PostgreSQL after a short trading session; its
``/metrics`` is parsed with prometheus_client's parser, and every metric name in every panel query and
template variable must be among the exported series (histograms as ``_bucket``/``_sum``/``_count``,
counters as ``_total``). The other way round, every ``trade_engine_*`` metric the engine exports is
shown on some panel, so a new metric cannot be forgotten on the dashboard.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import _scratch_database
from tests.ops.metrics_harness import ORDERS, Engine, running_engine

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "trade-engine.json"
ROWS = ["Health", "Trading", "Actors", "Storage"]

#: Series Prometheus makes itself for every scrape target, not the engine.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# PromQL words that are not metric names (functions are recognised by the parenthesis after them).
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                       "unless", "offset", "inf", "nan"})
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels or numbers)."""
    text = _VARIABLE.sub("", expr)
    text = _STRING.sub('""', text)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    names = set()
    for match in _NAME.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def test_the_metric_name_reader_finds_the_series_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, route) (rate(http_seconds_bucket'
            '{job=~"$job", route!="/metrics"}[$__rate_interval]))) / clamp_min(sum(rate(a_total[5m])), 1e-9)'
            ' or vector(0) and on (pair) b_gauge offset 1h unless count(c{x="sum(d)"} == 0)')
    assert metric_names(expr) == {"http_seconds_bucket", "a_total", "b_gauge", "c"}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return found


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    queries = [(f"panel {panel['title']!r}", target["expr"])
               for panel in _panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: {query}"
            queries.append((f"variable {variable['name']!r}", match.group(1)))
    return queries


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_the_dashboard_has_the_health_trading_actors_and_storage_rows_in_that_order(
        dashboard: dict[str, Any]) -> None:
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ROWS
    assert dashboard["uid"] == "trade-engine"
    # every row holds panels: a row is followed by at least one panel before the next row
    kinds = [panel["type"] == "row" for panel in dashboard["panels"]]
    assert not any(a and b for a, b in itertools.pairwise(kinds)) and not kinds[-1]


def test_every_panel_queries_through_the_datasource_variable_and_no_two_panels_overlap(
        dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_the_provisioning_declares_a_prometheus_datasource_and_a_file_provider_for_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert datasources["apiVersion"] == 1 and source["type"] == "prometheus"
    assert source["url"].startswith("http")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "trade-engine.yaml").read_text())
    (provider,) = providers["providers"]
    assert providers["apiVersion"] == 1 and provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert [p.name for p in (GRAFANA / "dashboards").iterdir()] == ["trade-engine.json"]


@pytest.fixture(scope="module")
def exported(machine_pg_admin_url: str) -> Iterator[set[str]]:
    """The series names a live engine exports after a short trading session."""
    for url in _scratch_database(machine_pg_admin_url):
        with running_engine(url) as engine:
            yield _session(engine)


def _session(engine: Engine) -> set[str]:
    alice = engine.trader(BTC="1", USDT="100000")
    bob = engine.trader(USDT="100000")
    resting = engine.place(alice, 201, side="SELL", quantity="0.5", price="50000")
    engine.place(bob, 201, side="BUY", quantity="0.1", price="50000")  # trades
    engine.place(bob, 201, side="BUY", quantity="0.1", price="50000", post_only=True)  # stored REJECTED
    engine.place(bob, 422, side="BUY", quantity="100", price="50000")  # INSUFFICIENT_BALANCE in the pair
    engine.place(bob, 201, side="BUY", quantity="0.1", price="40000")  # rests on the bid side
    cancelled = engine.client.simulate_delete(f"{ORDERS}/{resting['order']['id']}", headers=alice.headers)
    assert cancelled.status_code == 200, cancelled.text
    engine.settled(lambda s: any(name == "trade_engine_command_duration_seconds_count"
                                 and dict(labels).get("command") == "cancel" and v >= 1
                                 for (name, labels), v in s.items()))
    text = engine.scrape_text()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_query_of_the_dashboard_names_a_metric_the_live_engine_exports(
        dashboard: dict[str, Any], exported: set[str]) -> None:
    missing = []
    for where, expr in _queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        missing += [f"{where}: {name}" for name in sorted(names - exported - SYNTHETIC)]
    assert not missing, "\n".join(missing)


def test_every_metric_of_the_engine_is_shown_on_some_panel(
        dashboard: dict[str, Any], exported: set[str]) -> None:
    shown = {name for _, expr in _queries(dashboard) for name in metric_names(expr)}
    families = {re.sub(r"_(bucket|sum|count|total|created)$", "", name) for name in shown}
    engine_families = {re.sub(r"_(bucket|sum|count|total|created)$", "", name)
                       for name in exported if name.startswith("trade_engine_")}
    assert not engine_families - families, sorted(engine_families - families)
