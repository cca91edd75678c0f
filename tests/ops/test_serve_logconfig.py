"""Log records come out as JSON lines (or text) with an RFC 3339 UTC timestamp, and gunicorn's own
error log goes through the same handler while its access log stays silent."""

from __future__ import annotations

import io
import json
import logging
import random
import re
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from gunicorn.config import Config

from tradeengine.ops.logconfig import (
    GunicornLogger,
    JsonFormatter,
    TextFormatter,
    _timestamp,
    configure_logging,
)
from tradeengine.ops.settings import Settings

RFC3339_UTC_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _record(message: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object
            ) -> logging.LogRecord:
    record = logging.LogRecord("tradeengine.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    showwarning = warnings.showwarning
    gunicorn_state = {name: (logging.getLogger(name).propagate, logging.getLogger(name).disabled,
                             list(logging.getLogger(name).handlers))
                      for name in ("gunicorn.error", "gunicorn.access")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    warnings.showwarning = showwarning
    for name, (propagate, disabled, old) in gunicorn_state.items():
        log = logging.getLogger(name)
        log.propagate, log.disabled, log.handlers[:] = propagate, disabled, old


def test_json_line_has_timestamp_level_logger_message_and_extra_fields() -> None:
    line = JsonFormatter().format(_record(request_id="r-1", status=201, latency_ms=1.5))
    entry = json.loads(line)
    assert RFC3339_UTC_MICROS.match(entry["ts"])
    assert entry | {"ts": None} == {"ts": None, "level": "WARNING", "logger": "tradeengine.test",
                                    "message": "hello world", "request_id": "r-1", "status": 201,
                                    "latency_ms": 1.5}
    assert "\n" not in line


def test_uvicorns_colour_coded_copy_of_the_message_is_left_out() -> None:
    record = _record("Started server process [%d]", (7216,),
                     color_message="Started server process [\x1b[36m%d\x1b[0m]")
    assert json.loads(JsonFormatter().format(record))["message"] == "Started server process [7216]"
    assert "color_message" not in JsonFormatter().format(record)
    assert "color_message" not in TextFormatter().format(record)


def test_json_line_carries_the_traceback_of_an_exception() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        record = _record(exc_info=sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["exception"].startswith("Traceback")
    assert "ValueError: broken" in entry["exception"]


def test_json_line_survives_values_json_cannot_hold() -> None:
    entry = json.loads(JsonFormatter().format(_record(thing=object(), path=__import__("pathlib").Path("/x"))))
    assert entry["path"] == "/x" and entry["thing"].startswith("<object")


def test_text_line_is_readable_with_extras_after_the_message() -> None:
    line = TextFormatter().format(_record(request_id="r-1"))
    assert re.match(r"^\S+Z WARNING tradeengine\.test: hello world  request_id=r-1$", line)


def test_text_line_quotes_a_value_that_would_look_like_more_fields_or_lines() -> None:
    line = TextFormatter().format(_record(request_id='my id <1> a="b"', other="x\ny"))
    assert line.endswith('request_id="my id <1> a=\\"b\\"" other="x\\ny"')
    assert "\n" not in line


def test_configure_logging_installs_one_root_handler_in_the_chosen_format(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json", log_level="DEBUG"), stream)
    configure_logging(Settings(log_format="json", log_level="DEBUG"), stream)  # again: still one handler
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("tradeengine.anything").debug("to %s", "json", extra={"pair": "BTC-USDT"})
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["pair"] == "BTC-USDT"

    text = io.StringIO()
    configure_logging(Settings(log_format="text", log_level="WARNING"), text)
    logging.getLogger("tradeengine.anything").info("dropped below the level")
    logging.getLogger("tradeengine.anything").warning("kept")
    assert text.getvalue().count("\n") == 1 and "kept" in text.getvalue()


def test_gunicorn_error_log_goes_through_the_root_handler_and_access_log_is_silent(
        restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream)
    config = Config()
    config.set("accesslog", "-")  # even when asked for, no access line comes out
    glog = GunicornLogger(config)
    glog.info("Booting worker with pid: %s", 42)
    glog.info("Error while closing socket %s", "[Errno 9] Bad file descriptor")  # uvicorn closed it first
    glog.access(None, None, {}, None)
    logging.getLogger("gunicorn.access").info("never")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line) | {"ts": None} == {"ts": None, "level": "INFO", "logger": "gunicorn.error",
                                               "message": "Booting worker with pid: 42"}


def test_the_timestamp_is_what_datetime_renders_including_rounding_across_a_second() -> None:
    rng = random.Random(11)
    moments = [rng.uniform(1.7e9, 1.9e9) for _ in range(20_000)]
    moments += [1_795_000_000.9999996, 1_795_000_000.9999995, 1_795_000_000.0000005, 1_795_000_001.0]
    for moment in moments:
        assert _timestamp(moment) == datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
