"""Structured logging for every process of the engine (gunicorn master, worker, one-shot commands).

``configure_logging(settings)`` installs ONE handler on the root logger, writing to stderr either JSON
lines (``log_format=json``: one object per record with ``ts`` RFC 3339 UTC with microseconds, ``level``,
``logger``, ``message`` and every ``extra=`` field) or readable text (``log_format=text``, for a
terminal). gunicorn's error log is routed into the same root handler by :class:`GunicornLogger`;
gunicorn's access log stays off because the HTTP middleware writes one access line per request itself.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from gunicorn import glogging

from .settings import Settings

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
# (uvicorn adds ``color_message``, the message with terminal colour codes, for its own formatter.)
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message",
}

# Libraries that are chatty at INFO about things an operator does not act on.
_QUIET_LOGGERS = {"pgserver": logging.WARNING, "kombu": logging.WARNING, "amqp": logging.WARNING}


_second_prefix: tuple[int, str] = (-1, "")  # the last second rendered, and its "YYYY-MM-DDTHH:MM:SS."


def _timestamp(created: float) -> str:
    """`created` (a LogRecord's) as RFC 3339 UTC with microseconds, as datetime.fromtimestamp rounds it.

    The text up to the seconds is made once per second: strftime on every record was a twentieth of the
    worker's GIL time at `/health` (each request writes its access line).
    """
    global _second_prefix
    second = int(created)
    micro = round((created - second) * 1e6)  # what fromtimestamp does: half-even, on the fraction
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    known, prefix = _second_prefix
    if known != second:
        prefix = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_prefix = (second, prefix)
    return f"{prefix}{micro:06d}Z"


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items()
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_")}


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip()
    if record.exc_text:
        return record.exc_text
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            entry.setdefault(key, value)
        exception = _exception_text(record)
        if exception:
            entry["exception"] = exception
        if record.stack_info:
            entry["stack"] = record.stack_info
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message key=value ...`` with the traceback below, for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{key}={_text_value(value)}" for key, value in _extra_fields(record).items())
        if extras:
            line = f"{line}  {extras}"
        exception = _exception_text(record)
        if exception:
            line = f"{line}\n{exception}"
        return line


def _text_value(value: object) -> str:
    """A field's value as the text format writes it: bare, or quoted (JSON) where a space, a quote, an
    equals sign or a control character would make it look like more fields or more lines."""
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return orjson.dumps(text).decode()


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``json`` or ``text``."""
    return TextFormatter() if log_format == "text" else JsonFormatter()


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """Send every log record of this process, as JSON lines or text, to stderr (or ``stream``)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(settings.log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level_number)
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(level, settings.log_level_number))
    logging.captureWarnings(True)


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, made to write through the root handler and to keep no access log."""

    def setup(self, cfg: Any) -> None:
        """Route ``gunicorn.error`` to the root logger; leave ``gunicorn.access`` silent."""
        self.cfg = cfg
        self._access_log_enabled = False
        self.loglevel = logging.getLogger().level
        for log in (self.error_log, self.access_log):
            for old in list(log.handlers):
                log.removeHandler(old)
        self.error_log.propagate = True
        self.error_log.setLevel(logging.NOTSET)
        self.access_log.propagate = False
        self.access_log.disabled = True

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """As gunicorn's, but its "Error while closing socket [Errno 9] Bad file descriptor" at a worker's
        stop is at DEBUG: the ASGI server closed the listening socket first, which is how it stops."""
        if msg.startswith("Error while closing socket") and args and "[Errno 9]" in str(args[0]):
            self.debug(msg, *args, **kwargs)
        else:
            super().info(msg, *args, **kwargs)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Write nothing: the HTTP middleware logs every request with its route and request id."""

    def reopen_files(self) -> None:
        """Nothing to reopen: records go to stderr."""

    def close_on_exec(self) -> None:
        """Nothing to mark: records go to stderr."""
