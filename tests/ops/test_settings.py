"""Settings are built once from the environment, validated, and never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradeengine.actors.relay import RelaySettings
from tradeengine.ops.settings import Settings, SettingsError


def test_an_empty_environment_gives_embedded_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.embedded_database
    assert settings.http_port == 8080
    assert settings.data_dir == Path("var")
    assert settings.broker_url == "memory://"
    assert settings.log_format in ("json", "text")
    assert settings.relay_nudge_interval == RelaySettings().nudge_interval == 0.03


def test_every_documented_variable_is_read() -> None:
    settings = Settings.from_env({
        "TRADE_ENGINE_DATABASE_URL": "postgresql://u@db:5432/x",
        "TRADE_ENGINE_REDIS_URL": "redis://cache:6379/0",
        "TRADE_ENGINE_REDIS_KEY_PREFIX": " exchange-a: ",
        "TRADE_ENGINE_BROKER_URL": "amqp://guest:guest@mq:5672//",
        "TRADE_ENGINE_HTTP_HOST": "0.0.0.0",
        "TRADE_ENGINE_HTTP_PORT": "9000",
        "TRADE_ENGINE_DATA_DIR": "/srv/te",
        "TRADE_ENGINE_LOG_LEVEL": "debug",
        "TRADE_ENGINE_LOG_FORMAT": "TEXT",
        "TRADE_ENGINE_CORS_ORIGINS": "https://a.example, https://b.example",
        "TRADE_ENGINE_DATABASE_PREPARE": "false",
        "TRADE_ENGINE_RELAY_PROCESS": "yes",
        "TRADE_ENGINE_RELAY_NUDGE_INTERVAL": "0",
    })
    assert settings.database_url == "postgresql://u@db:5432/x"
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.redis_key_prefix == "exchange-a:"
    assert settings.broker_url.startswith("amqp://")
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 9000)
    assert settings.data_dir == Path("/srv/te")
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "text"
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.database_prepare is False
    assert settings.relay_process is True
    assert settings.relay_nudge_interval == 0.0


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("HTTP_PORT", "abc", "must be a whole number"),
        ("HTTP_PORT", "70000", "port number"),
        ("DATABASE_URL", "mysql://x", "postgresql://"),
        ("REDIS_URL", "http://x", "redis://"),
        ("REDIS_KEY_PREFIX", "a b", "letters, digits"),
        ("REDIS_KEY_PREFIX", "x" * 65, "1-64"),
        ("BROKER_URL", "kafka://x", "amqp://"),
        ("LOG_LEVEL", "LOUD", "must be one of"),
        ("LOG_FORMAT", "xml", "json or text"),
        ("CORS_ORIGINS", "example.com", "http://"),
        ("REQUEST_TIMEOUT", "-1", "greater than 0"),
        ("DATABASE_PREPARE", "maybe", "true or false"),
        ("REQUEST_TIMEOUT", "inf", "up to 1e+09"),
        ("REQUEST_TIMEOUT", "nan", "up to 1e+09"),
        ("REQUEST_TIMEOUT", "1e12", "up to 1e+09"),
        ("REQUEST_TIMEOUT", "7200", "at most 3600"),
        ("MARKET_DATA_INTERVAL", "2", "at most 1 s"),
        ("OUTBOX_RETENTION", "1e14", "up to 1e+09"),
        ("WALLET_URL", "http://", "names no host"),
        ("WALLET_URL", "http://:80/x", "names no host"),
        ("DATABASE_URL", "postgresql://postgres@[bad/x", "not a valid URL"),
        ("REDIS_URL", "redis://h:port/0", "not a valid URL"),
        ("BOOTSTRAP_ADMIN_KEY", "secret", "te_ followed by"),
        ("BOOTSTRAP_ADMIN_KEY", "te_short", "te_ followed by"),
        ("RATE_LIMIT", "-1", "must be 0 (off)"),
        ("RATE_LIMIT", "fast", "must be a whole number"),
        ("RATE_BURST", "0", "at least 1"),
        ("PUBLIC_RATE_LIMIT", "-5", "must be 0 (off)"),
        ("PUBLIC_RATE_BURST", "0", "at least 1"),
        ("RELAY_PROCESS", "sometimes", "true or false"),
        ("RELAY_PROCESS", "true", "memory:// reaches one process only"),  # with the default broker
        ("RELAY_NUDGE_INTERVAL", "1", "less than 1 second"),
        ("RELAY_NUDGE_INTERVAL", "-0.01", "at least 0"),
        ("RELAY_NUDGE_INTERVAL", "soon", "number of seconds"),
    ],
)
def test_a_bad_value_is_refused_with_a_message_naming_the_variable(
    name: str, value: str, complaint: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({f"TRADE_ENGINE_{name}": value})
    message = str(caught.value)
    assert message.startswith(f"TRADE_ENGINE_{name}")
    assert complaint in message
    assert "\n" not in message


def test_rate_limits_default_to_generous_per_user_and_lower_per_address_limits() -> None:
    settings = Settings.from_env({})
    assert (settings.rate_limit, settings.rate_burst) == (500, 1000)
    assert (settings.public_rate_limit, settings.public_rate_burst) == (100, 200)


def test_rate_limits_are_read_and_zero_turns_one_off() -> None:
    settings = Settings.from_env({
        "TRADE_ENGINE_RATE_LIMIT": "0",
        "TRADE_ENGINE_RATE_BURST": "50",
        "TRADE_ENGINE_PUBLIC_RATE_LIMIT": " 20 ",
        "TRADE_ENGINE_PUBLIC_RATE_BURST": "40",
    })
    assert (settings.rate_limit, settings.rate_burst) == (0, 50)
    assert (settings.public_rate_limit, settings.public_rate_burst) == (20, 40)


def test_an_unknown_variable_is_refused_so_a_typo_never_falls_back_to_a_default() -> None:
    with pytest.raises(SettingsError, match="TRADE_ENGINE_HTTP_PROT: unknown setting"):
        Settings.from_env({"TRADE_ENGINE_HTTP_PROT": "9000"})


def test_test_harness_variables_are_not_settings() -> None:
    Settings.from_env({"TRADE_ENGINE_REQUIRE_SERVICES": "1",
                       "TRADE_ENGINE_TEST_DATABASE_URL": "postgresql://x"})


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.http_port = 1  # type: ignore[misc]


def test_documentation_lists_every_variable_with_its_default() -> None:
    rows = {name: default for name, default, _ in Settings.documentation()}
    assert rows["TRADE_ENGINE_HTTP_PORT"] == "8080"
    assert rows["TRADE_ENGINE_DATABASE_URL"] == ""
    assert len(rows) == len(Settings.__dataclass_fields__)


def test_a_variable_set_empty_or_blank_means_its_default() -> None:
    """What `X: ${X:-}` in a compose file gives: as if unset, for every setting (an empty broker URL was
    None and crashed the worker, an empty boolean turned its feature off)."""
    empty = {f"TRADE_ENGINE_{name.upper()}": "" for name in Settings.__dataclass_fields__}
    empty["TRADE_ENGINE_DATA_DIR"] = "  "
    settings = Settings.from_env(empty)
    assert settings == Settings.from_env({})
    assert (settings.broker_url, settings.writer_process, settings.http_port) == ("memory://", True, 8080)
