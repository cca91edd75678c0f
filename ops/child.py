"""What every child process of the engine does first (`ops.relay_main`, `ops.writer_main`).

The engine's worker starts them with a pipe on stdin whose first line is their configuration, and
stops them by closing it. Their log goes to the engine's stderr in the engine's format (their
environment is the engine's), and they run the garbage collector as the worker does (`ops.gcpolicy`).
Ctrl-C at a terminal, and SIGTERM sent to the whole process group (systemd's default KillMode, `timeout`,
`kill -TERM -- -PGID`), reach the children too: the engine stops gracefully and then closes stdin, so a
child ignores SIGINT and SIGTERM. Ending at once would look like a crash: a writer child gone before its
engine has answered the commands in flight turns them into "outcome unknown" 504s. (The engine kills a
child that does not end after its stdin closed; a child of an engine killed with -9 sees its stdin end.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import Any

from tradeengine.ops.gcpolicy import tune_collector
from tradeengine.ops.logconfig import configure_logging
from tradeengine.ops.settings import Settings, SettingsError

__all__ = ["begin_child"]


def begin_child(log: logging.Logger, what: str) -> dict[str, Any] | None:
    """Configure logging and the garbage collector as the engine's, ignore SIGINT and SIGTERM, and return the
    configuration read from the first line of stdin (one JSON object); None, logged, when there is none."""
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError:
        settings = Settings()
    configure_logging(settings)
    tune_collector(settings.gc_threshold)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config: dict[str, Any] = json.loads(sys.stdin.buffer.readline() or b"{}")
    if not config:
        log.error("%s: no configuration on stdin", what)
        return None
    return config
