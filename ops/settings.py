"""One typed, frozen settings object built from ``TRADE_ENGINE_*`` environment variables.

``Settings.from_env(environ)`` is called once, at start, by the command line; nothing reads the
environment at import time. Every value is validated there: a bad value raises ``SettingsError``
naming the variable and what is wrong, and an unknown ``TRADE_ENGINE_*`` variable is refused so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PREFIX = "TRADE_ENGINE_"

# Variables of the project that are not engine settings (test harness switches and URLs).
NOT_SETTINGS = frozenset({"REQUIRE_SERVICES"})
NOT_SETTINGS_PREFIXES = ("TEST_",)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable and the problem."""


def _text(name: str, raw: str) -> str:
    return raw


def _port(name: str, raw: str) -> int:
    value = _int(name, raw)
    if not 0 <= value <= 65535:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be a port number from 0 to 65535")
    return value


def _int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be a whole number") from None


def _positive_int(name: str, raw: str) -> int:
    value = _int(name, raw)
    if value < 1:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be at least 1")
    return value


def _retries(name: str, raw: str) -> int:
    value = _int(name, raw)
    if not 0 <= value <= 10:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be a number of retries from 0 to 10")
    return value


def _rate(name: str, raw: str) -> int:
    value = _int(name, raw)
    if value < 0:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be 0 (off) or a number of requests per second")
    return value


MAX_SECONDS = 1e9
"""The longest duration a setting takes (~31 years): longer ones overflow the dates they compute."""


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be a number of seconds") from None
    if not abs(value) <= MAX_SECONDS:  # inf and nan too
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be a number of seconds up to {MAX_SECONDS:.0e}")
    return value


def _positive_float(name: str, raw: str) -> float:
    value = _seconds(name, raw)
    if not value > 0:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be greater than 0")
    return value


def _seconds_up_to(limit: float, why: str) -> Callable[[str, str], float]:
    """A parser of a positive number of seconds of at most `limit` (`why`: the reason, for the message)."""
    def parse(name: str, raw: str) -> float:
        value = _positive_float(name, raw)
        if value > limit:
            raise SettingsError(f"{PREFIX}{name}={raw!r}: must be at most {limit:g} s ({why})")
        return value

    return parse


def _book_levels(name: str, raw: str) -> int:
    value = _int(name, raw)
    if not 1 <= value <= 500:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be a number of levels from 1 to 500")
    return value


def _relay_interval(name: str, raw: str) -> float:
    value = _seconds(name, raw)
    if not 0 <= value < 1.0:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be at least 0 and less than 1 second (the relay's "
                            "idle interval)")
    return value


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{PREFIX}{name}={raw!r}: must be true or false")


def _url(*schemes: str) -> Callable[[str, str], str | None]:
    def parse(name: str, raw: str) -> str | None:
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018  # raises ValueError for a port that is not a number
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}{name}={raw!r}: not a valid URL ({exc})") from None
        if parts.scheme not in schemes:
            allowed = ", ".join(f"{s}://" for s in schemes)
            raise SettingsError(f"{PREFIX}{name}={raw!r}: must be a URL starting with {allowed}")
        if parts.scheme in ("http", "https") and not parts.hostname:
            raise SettingsError(f"{PREFIX}{name}={raw!r}: names no host (e.g. http://127.0.0.1:8090)")
        return raw

    return parse


def _log_level(name: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be one of {', '.join(LOG_LEVELS)}")
    return level


def _log_format(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("json", "text"):
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be json or text")
    return value


def _origins(name: str, raw: str) -> tuple[str, ...]:
    origins = tuple(part.strip() for part in raw.split(",") if part.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise SettingsError(
                f"{PREFIX}{name}={raw!r}: each origin must be * or start with http:// or https://"
            )
    return origins


def _api_key(name: str, raw: str) -> str | None:
    key = raw.strip()
    if not key:
        return None
    if not key.startswith("te_") or len(key) < 19 or not key[3:].replace("-", "").replace("_", "").isalnum():
        raise SettingsError(f"{PREFIX}{name}: must be te_ followed by at least 16 letters, digits, - or _ "
                            "(e.g. te_ and the output of `openssl rand -hex 24`)")
    return key


def _name(longest: int) -> Callable[[str, str], str]:
    """A name of 1 to `longest` letters, digits, '-', '_', '.' or ':' (an exchange, a key prefix)."""
    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        if not value or len(value) > longest or not all(c.isalnum() or c in "-_.:" for c in value):
            raise SettingsError(
                f"{PREFIX}{name}={raw!r}: must be 1-{longest} letters, digits, '-', '_', '.' or ':'")
        return value
    return parse


def _path(name: str, raw: str) -> Path:
    if not raw.strip():
        raise SettingsError(f"{PREFIX}{name} is empty: give a folder path")
    return Path(raw.strip())


def _field(parse: Callable[[str, str], Any], default: Any, doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"parse": parse, "doc": doc})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Validated engine configuration; build it with :meth:`from_env`."""

    database_url: str | None = _field(
        _url("postgresql", "postgres"), None,
        "PostgreSQL URL; unset = embedded PostgreSQL in DATA_DIR/postgres",
    )
    database_pool_size: int = _field(_positive_int, 8, "PostgreSQL connections in the pool")
    database_prepare: bool = _field(
        _bool, True, "server-side prepared statements; set false behind PgBouncer (transaction mode)"
    )
    writer_process: bool = _field(
        _bool, True, "the persistence writer builds and commits its batches in a process of its own, off "
        "the engine's GIL (worth it with a core to spare)"
    )
    redis_url: str | None = _field(
        _url("redis", "rediss", "unix"), None, "Redis URL for the market-data mirror and rate limits"
    )
    redis_key_prefix: str = _field(
        _name(64), "tradeengine:",
        "what every Redis key (and channel) of the engine starts with: market data under PREFIX md:, rate "
        "limits under PREFIX ratelimit:, breaker state under PREFIX breaker:; engines sharing one Redis "
        "database each need their own",
    )
    market_data_levels: int = _field(
        _book_levels, 50,
        "order-book levels per side the Redis mirror keeps (1–500); a deeper request is read from the pair",
    )
    market_data_interval: float = _field(
        _seconds_up_to(1.0, "readers stop trusting the mirror after 2 s"), 0.05,
        "seconds between the Redis mirror's looks at the pairs (at most 1): a pair is written at most "
        "once per interval",
    )
    broker_url: str = _field(
        _url("memory", "amqp", "amqps", "pyamqp"), "memory://",
        "kombu broker URL: amqp:// for RabbitMQ; with memory:// events reach only consumers inside the "
        "engine process and are marked published",
    )
    broker_exchange: str = _field(
        _name(255), "trade-engine", "the durable topic exchange the outbox relay publishes events to"
    )
    relay_process: bool = _field(
        _bool, False, "run the outbox relay in a process of its own, off the engine's GIL (amqp:// brokers "
        "only; worth it with a core to spare: see Benchmarks)"
    )
    relay_nudge_interval: float = _field(
        _relay_interval, 0.03,
        "seconds at least between two passes of the outbox relay under load (0 to under 1): events leave "
        "at most that much after their commit; a longer one gathers more commits into one pass",
    )
    outbox_retention: float = _field(
        _positive_float, 86400,
        "seconds a published outbox row is kept before the hourly maintenance prunes it",
    )
    wallet_url: str | None = _field(
        _url("http", "https"), None,
        "remote wallet service URL (see ops/walletservice/CONTRACT.md); unset = the built-in ledger",
    )
    wallet_timeout: float = _field(_positive_float, 1.0, "seconds per wallet service call attempt")
    wallet_retries: int = _field(
        _retries, 3, "retries of a wallet call after a connect error, timeout or 5xx (never after a 4xx)"
    )
    wallet_breaker_fail_max: int = _field(
        _positive_int, 5, "consecutive wallet failures that open the circuit breaker (orders then get 503)"
    )
    wallet_breaker_reset_timeout: float = _field(
        _positive_float, 10.0, "seconds the wallet breaker stays open before one probe may close it"
    )
    http_host: str = _field(_text, "127.0.0.1", "address the HTTP server binds")
    http_port: int = _field(_port, 8080, "port the HTTP server binds")
    http_threads: int = _field(_positive_int, 16,
                               "threads for the HTTP worker's blocking calls (database reads, admin routes)")
    gc_threshold: int = _field(
        _positive_int, 50000,
        "net new objects between two runs of Python's garbage collector in the engine's processes (Python's "
        "default, 700, paused a loaded worker ~70 ms about once a second); what exists at start is frozen",
    )
    data_dir: Path = _field(
        _path, Path("var"),
        "folder for the embedded database and local state (relative to the current folder)",
    )
    log_level: str = _field(_log_level, "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL")
    log_format: str = _field(_log_format, "", "json or text; default text on a terminal, json otherwise")
    cors_origins: tuple[str, ...] = _field(_origins, (), "comma-separated allowed CORS origins, or *")
    request_timeout: float = _field(
        _seconds_up_to(3600, "a request waits that long for the engine"), 5.0,
        "seconds to wait for the engine before answering 504 (at most 3600)"
    )
    bootstrap_admin_key: str | None = _field(
        _api_key, None, "creates an admin with this API key (te_…) at start when no admin exists"
    )
    rate_limit: int = _field(
        _rate, 500,
        "requests/s each user may sustain (each order of a batch counts); 0 = off. Far above a busy "
        "trading client (~300 orders/s), yet one runaway client cannot take the whole engine",
    )
    rate_burst: int = _field(
        _positive_int, 1000,
        "requests a user may send at once before RATE_LIMIT applies (2 s of it: reconnects, full batches)",
    )
    public_rate_limit: int = _field(
        _rate, 100,
        "requests/s per client address on the public market-data routes (no key); 0 = off. Lower, as "
        "anyone may call them; a market-data screen polls a few per second",
    )
    public_rate_burst: int = _field(_positive_int, 200, "requests a client address may send at once")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build and validate settings from ``TRADE_ENGINE_*`` variables; raise SettingsError."""
        known = {f.name.upper(): f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX):]
            if name in NOT_SETTINGS or name.startswith(NOT_SETTINGS_PREFIXES):
                continue
            field = known.get(name)
            if field is None:
                raise SettingsError(f"{key}: unknown setting (known: {', '.join(sorted(known))})")
            if raw.strip():  # empty is as unset (what `X: ${X:-}` gives in a compose file): the default
                values[field.name] = field.metadata["parse"](name, raw)
        if not values.get("log_format"):
            values["log_format"] = "text" if sys.stderr.isatty() else "json"
        if values.get("relay_process") and str(values.get("broker_url") or "memory://").startswith("memory:"):
            raise SettingsError(f"{PREFIX}RELAY_PROCESS=true needs a broker of its own ({PREFIX}BROKER_URL="
                                "amqp://...): memory:// reaches one process only")
        return cls(**values)

    @property
    def embedded_database(self) -> bool:
        """True when no DATABASE_URL is set and the engine runs its own PostgreSQL."""
        return self.database_url is None

    @property
    def log_level_number(self) -> int:
        """The logging module's number for ``log_level``."""
        return logging.getLevelName(self.log_level)  # type: ignore[no-any-return]

    @staticmethod
    def documentation() -> list[tuple[str, str, str]]:
        """Rows of (variable, default, meaning) for the README and ``--help``."""
        rows = []
        for f in dataclasses.fields(Settings):
            default = f.default
            if isinstance(default, tuple):
                default = ",".join(default)
            elif isinstance(default, bool):
                default = str(default).lower()
            shown = "" if default in (None, "", ()) else str(default)
            rows.append((PREFIX + f.name.upper(), shown, f.metadata["doc"]))
        return rows

