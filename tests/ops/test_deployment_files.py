"""The deployment files agree with what the test suite runs for real.

- ops/compose.yaml is valid for docker compose (``config``; skipped without a compose tool, failed with
  TRADE_ENGINE_REQUIRE_SERVICES=1); its engine is configured only by valid TRADE_ENGINE_* settings and
  reaches each service where that service listens; PgBouncer runs ops/pgbouncer/pgbouncer.ini, the file
  tests/e2e/test_pgbouncer.py runs a real pgbouncer with; Prometheus runs the config and rules that
  tests/ops/test_prometheus_rules.py checks with promtool; Grafana is provisioned from ops/grafana.
- ops/Dockerfile builds a wheel from every package folder and serves with the command the compose engine
  runs; .github/workflows/ci.yml runs its service containers from the images compose deploys, where
  tests/conftest.py looks for them, and installs promtool and pgbouncer.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import DEFAULT_BROKER_URL, DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, services_required
from tradeengine.ops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
COMPOSE = OPS / "compose.yaml"
DOCKERFILE = OPS / "Dockerfile"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
PGBOUNCER_INI = OPS / "pgbouncer" / "pgbouncer.ini"
PROMETHEUS_CONFIG = OPS / "prometheus" / "prometheus.yml"
GRAFANA = OPS / "grafana"
SERVICES = {"postgres", "pgbouncer", "redis", "rabbitmq", "engine", "prometheus", "grafana"}
BACKING_SERVICES = ("postgres", "redis", "rabbitmq")  # also CI's service containers

_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def interpolate(value: object) -> str:
    """A compose value as compose passes it on when the variables are unset: defaults, ``$$`` as ``$``."""
    text = str(value)
    assert not re.search(r"\$\{\w+\}|\$(?!\$)\w", _DEFAULTED.sub("", text).replace("$$", "")), (
        f"{text!r}: every variable needs a default (${{NAME:-default}})")
    return _DEFAULTED.sub(lambda m: m.group(2), text).replace("$$", "$")


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = _load_yaml(COMPOSE)
    return loaded


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"][name]
    return service


def _environment(compose: dict[str, Any], name: str) -> dict[str, str]:
    return {key: interpolate(value) for key, value in _service(compose, name).get("environment", {}).items()}


def _mounts(compose: dict[str, Any], name: str) -> dict[str, str]:
    """Bind mounts of a service: container path → host path (relative to ops/)."""
    mounts = {}
    for volume in _service(compose, name).get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = source
    return mounts


def _published(compose: dict[str, Any], name: str) -> dict[int, str]:
    """Published ports of a service: container port → host side ("8080" or "127.0.0.1:3000")."""
    ports = {}
    for spec in _service(compose, name).get("ports", []):
        host, _, container = str(spec).rpartition(":")
        ports[int(container)] = host
    return ports


def _healthcheck(compose: dict[str, Any], name: str) -> list[str]:
    test: list[str] = _service(compose, name)["healthcheck"]["test"]
    assert test[0] == "CMD", f"{name}: the health check runs a command (exec form)"
    return test[1:]


def _ini() -> dict[str, dict[str, str]]:
    from tests.e2e.test_pgbouncer import read_ini

    return read_ini(PGBOUNCER_INI.read_text())


# -- compose ---------------------------------------------------------------------------------------------


def _compose_tool() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True,
                                             timeout=60, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_docker_compose_accepts_the_file_and_resolves_the_engines_settings_as_read_here(
        compose: dict[str, Any]) -> None:
    tool = _compose_tool()
    if tool is None:
        message = "neither the docker compose plugin nor docker-compose is installed"
        if services_required():
            pytest.fail(f"{message} (TRADE_ENGINE_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(f"{message} (set TRADE_ENGINE_REQUIRE_SERVICES=1 to fail instead)")
    variables = {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "TRADE_ENGINE_LOG_LEVEL",
                 "TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY"}
    env = {key: value for key, value in os.environ.items() if key not in variables}
    result = subprocess.run([*tool, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == SERVICES
    for name in SERVICES:
        expected = _environment(compose, name)
        environment = resolved["services"][name].get("environment") or {}
        got = {key: str(value) for key, value in environment.items()}
        assert got == expected, name


def test_every_service_has_a_health_check_restarts_and_its_bind_mounts_exist(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    for name in SERVICES:
        assert _healthcheck(compose, name), name
        assert _service(compose, name)["restart"] == "unless-stopped", name
        for source in _mounts(compose, name).values():
            assert (OPS / source).exists(), f"{name} mounts {source}, which is not in ops/"
    named = {volume.split(":")[0] for service in compose["services"].values()
             for volume in service.get("volumes", []) if not volume.startswith(".")}
    assert named == set(compose["volumes"])


def test_the_engine_is_configured_by_valid_settings_and_reaches_every_service_where_it_listens(
        compose: dict[str, Any]) -> None:
    engine = _service(compose, "engine")
    env = _environment(compose, "engine")
    assert all(key.startswith("TRADE_ENGINE_") for key in env)
    settings = Settings.from_env(env)  # refuses unknown variables and bad values

    # PostgreSQL only through PgBouncer, without server-side prepared statements
    assert settings.database_prepare is False
    database = urlsplit(settings.database_url or "")
    ini = _ini()
    ((name, target),) = ini["databases"].items()
    server = dict(part.split("=", 1) for part in target.split())
    postgres = _environment(compose, "postgres")
    bouncer = _environment(compose, "pgbouncer")
    assert (database.hostname, database.port) == ("pgbouncer", int(ini["pgbouncer"]["listen_port"]))
    assert database.path == f"/{name}"
    assert (server["host"], server["port"], server["dbname"]) == ("postgres", "5432", postgres["POSTGRES_DB"])
    assert database.username == bouncer["PGBOUNCER_USER"] == postgres["POSTGRES_USER"]
    assert database.password == bouncer["PGBOUNCER_PASSWORD"] == postgres["POSTGRES_PASSWORD"]

    redis = urlsplit(settings.redis_url or "")
    assert (redis.hostname, redis.port or 6379) == ("redis", 6379)
    broker = urlsplit(settings.broker_url)
    rabbitmq = _environment(compose, "rabbitmq")
    assert (broker.scheme, broker.hostname, broker.port) == ("amqp", "rabbitmq", 5672)
    assert broker.username == rabbitmq["RABBITMQ_DEFAULT_USER"]
    assert broker.password == rabbitmq["RABBITMQ_DEFAULT_PASS"]

    # served where the port, the health check and Prometheus look; data in its volume
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port in _published(compose, "engine")
    assert f"http://127.0.0.1:{settings.http_port}/ready" in " ".join(_healthcheck(compose, "engine"))
    jobs = _load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    (job,) = [job for job in jobs if job["job_name"] == "trade-engine"]
    assert job["static_configs"] == [{"targets": [f"engine:{settings.http_port}"]}]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert f"engine-data:{settings.data_dir}" in engine["volumes"]

    # the command the e2e tests run (`python -m tradeengine.ops.cli serve` is the trade-engine script)
    assert engine["command"] == ["trade-engine", "serve"] == _dockerfile_cmd("engine")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["trade-engine"] == "tradeengine.ops.cli:main"
    assert engine["build"] == {"context": "..", "dockerfile": "ops/Dockerfile", "target": "engine"}
    assert engine["depends_on"] == {name: {"condition": "service_healthy"}
                                    for name in ("pgbouncer", "redis", "rabbitmq")}


def test_pgbouncer_runs_the_ini_the_e2e_test_runs_with_the_password_file_it_names(
        compose: dict[str, Any]) -> None:
    bouncer = _service(compose, "pgbouncer")
    ini = _ini()["pgbouncer"]
    assert ini["pool_mode"] == "transaction"
    assert _mounts(compose, "pgbouncer") == {"/etc/pgbouncer/pgbouncer.ini": "./pgbouncer/pgbouncer.ini"}
    assert bouncer["build"] == {"context": "..", "dockerfile": "ops/Dockerfile", "target": "pgbouncer"}
    shell, flag, script = bouncer["command"]
    assert (shell, flag) == ("sh", "-c")
    writes, runs = (part.strip() for part in interpolate(script).split("&&"))
    assert writes == f"""printf '"%s" "%s"\\n' "$PGBOUNCER_USER" "$PGBOUNCER_PASSWORD" > {ini['auth_file']}"""
    assert shlex.split(runs) == ["exec", "pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]
    health = _healthcheck(compose, "pgbouncer")
    assert health[health.index("-p") + 1] == ini["listen_port"]
    assert bouncer["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # the image can write the password file: its folder belongs to the user pgbouncer runs as
    stage = _dockerfile_stages()["pgbouncer"]
    user = next(arg for op, arg in stage if op == "USER")
    folder = str(Path(ini["auth_file"]).parent)
    assert any(op == "RUN" and f"install -d -o {user} -g {user} {folder}" in arg for op, arg in stage)
    assert any(op == "RUN" and "apt-get install" in arg and " pgbouncer " in arg for op, arg in stage)


def test_prometheus_runs_the_checked_config_and_grafana_reads_it_at_the_scrape_interval(
        compose: dict[str, Any]) -> None:
    prometheus = _service(compose, "prometheus")
    assert _mounts(compose, "prometheus") == {"/etc/prometheus": "./prometheus"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "http://127.0.0.1:9090/-/healthy" in _healthcheck(compose, "prometheus")
    config = _load_yaml(PROMETHEUS_CONFIG)
    for rules in config["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rules).is_file(), rules

    grafana = _service(compose, "grafana")
    datasource = _load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert 9090 in _published(compose, "prometheus")
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
    (provider,) = _load_yaml(GRAFANA / "provisioning" / "dashboards" / "trade-engine.yaml")["providers"]
    assert _mounts(compose, "grafana") == {"/etc/grafana/provisioning": "./grafana/provisioning",
                                           provider["options"]["path"]: "./grafana/dashboards"}
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert "http://127.0.0.1:3000/api/health" in _healthcheck(compose, "grafana")


# -- Dockerfile ------------------------------------------------------------------------------------------


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions (OPERATION, arguments) of each named stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        op, _, arg = line.strip().partition(" ")
        op, arg = op.upper(), " ".join(arg.split())
        if op == "FROM":
            match = re.fullmatch(r"(\S+) AS (\w+)", arg, re.I)
            assert match, f"every stage is named: FROM {arg}"
            current = stages.setdefault(match.group(2), [])
        if current is not None:
            current.append((op, arg))
    return stages


def _dockerfile_cmd(stage: str) -> list[str]:
    (cmd,) = [arg for op, arg in _dockerfile_stages()[stage] if op == "CMD"]
    command: list[str] = json.loads(cmd)
    return command


def test_the_dockerfile_builds_a_wheel_of_every_package_and_serves_as_the_compose_engine(
        compose: dict[str, Any]) -> None:
    stages = _dockerfile_stages()
    assert list(stages)[-1] == "engine", "the engine is the last stage: a plain `docker build` makes it"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {path.split("/")[0] for path in pyproject["tool"]["setuptools"]["package-dir"].values()}
    copied = {source.rstrip("/") for op, arg in stages["build"] if op == "COPY"
              for source in arg.split()[:-1]}
    assert folders | {"pyproject.toml", "setup.py", pyproject["project"]["readme"]} <= copied
    assert any(op == "RUN" and "pip wheel" in arg for op, arg in stages["build"])

    header = DOCKERFILE.read_text()
    (python,) = re.findall(r"^ARG PYTHON_VERSION=(\S+)$", header, re.M)
    minimum = re.fullmatch(r">=(\d+\.\d+)", pyproject["project"]["requires-python"])
    assert minimum and tuple(map(int, python.split("."))) >= tuple(map(int, minimum.group(1).split(".")))
    assert _load_yaml(WORKFLOW)["env"]["PYTHON_VERSION"] == python  # CI tests the Python the image runs

    engine = stages["engine"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(arg for op, arg in engine if op == "ENV")))
    image_settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("TRADE_ENGINE_")})
    compose_settings = Settings.from_env(_environment(compose, "engine"))
    assert image_settings.http_port == compose_settings.http_port
    assert ("EXPOSE", str(image_settings.http_port)) in engine
    assert image_settings.data_dir == compose_settings.data_dir
    (health,) = [arg for op, arg in engine if op == "HEALTHCHECK"]
    assert "/ready" in health and "TRADE_ENGINE_HTTP_PORT" in health
    assert ("USER", "trade-engine") in engine


# -- CI workflow -----------------------------------------------------------------------------------------


def test_ci_runs_the_compose_images_where_the_tests_look_and_everything_the_suite_needs(
        compose: dict[str, Any]) -> None:
    workflow = _load_yaml(WORKFLOW)
    job = workflow["jobs"]["test"]
    for name in BACKING_SERVICES:
        assert job["services"][name]["image"] == _service(compose, name)["image"], name
    env = job["env"]
    assert env["TRADE_ENGINE_REQUIRE_SERVICES"] == "1"
    for variable, default, service, port in (
            ("TRADE_ENGINE_TEST_DATABASE_URL", DEFAULT_DATABASE_URL, "postgres", 5432),
            ("TRADE_ENGINE_TEST_REDIS_URL", DEFAULT_REDIS_URL, "redis", 6379),
            ("TRADE_ENGINE_TEST_BROKER_URL", DEFAULT_BROKER_URL, "rabbitmq", 5672)):
        url = urlsplit(env[variable])
        assert (url.scheme, url.hostname, url.port) == (urlsplit(default).scheme, "127.0.0.1", port)
        assert f"{port}:{port}" in job["services"][service]["ports"]
    broker = urlsplit(env["TRADE_ENGINE_TEST_BROKER_URL"])
    rabbitmq = job["services"]["rabbitmq"]["env"]
    assert broker.username == rabbitmq["RABBITMQ_DEFAULT_USER"]
    assert broker.password == rabbitmq["RABBITMQ_DEFAULT_PASS"]
    # the database URL has no password
    assert job["services"]["postgres"]["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"

    runs = [step.get("run", "") for step in job["steps"]]
    assert any(re.search(r"apt-get install\b.*\bprometheus\b.*\bpgbouncer\b", run) for run in runs)
    assert any(".venv/bin/pip install -q -e '.[test]' pytest-cov" in run for run in runs)
    (tests,) = [run for run in runs if "-m pytest" in run]
    assert "--cov=" in tests and " -m " not in tests.replace("-m pytest", "")  # the default suite, whole
    lint = [step.get("run", "") for step in workflow["jobs"]["lint"]["steps"]]
    assert any("ruff check" in run for run in lint)
    assert any("tests/test_quality.py -k mypy" in run for run in lint)
