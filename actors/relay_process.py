"""RelayProcess: the outbox relay's place in the supervision tree when it runs in a process of its own.

With ``RelaySettings(process=True)`` (``TRADE_ENGINE_RELAY_PROCESS``; amqp:// brokers only), the
supervisor's child "relay" is this actor instead of `OutboxRelay`: it starts ``python -m
tradeengine.ops.relay_main`` (the same relay, see there) and stands for it. It holds nothing the table
does not have either, so it is supervised the same way: one-for-one, in no group.

- start: the child gets its configuration as the first line of its stdin (`relay_config`); its stderr is the
  engine's, its stdout reports its figures, which a reader thread adds into the shared `RelayStats`
  (metrics and `ActorSystem.relay_figures` read them as with the in-process relay);
- `Nudge` (the system sends one after every commit): one byte to the child's stdin, never blocking (a
  full pipe already holds a nudge);
- the child exits on its own (the relay broke, or it crashed): the reader tells this actor, which reports
  itself broken, so the supervisor starts a new incarnation, and a new child, with backoff and intensity;
- stop: the child's stdin is closed, it finishes its pass and exits; after ``stop_timeout`` it is killed.
  A child whose parent died sees the same end of file and exits too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
from typing import Any

import pykka

from .polling import Nudge
from .relay import RelayFigures, RelaySettings, RelayStats
from .supervised import ChildLink, SupervisedActor

__all__ = ["RELAY_COMMAND", "RelayProcess", "relay_config"]

RELAY_COMMAND = (sys.executable, "-m", "tradeengine.ops.relay_main")
"""The child's command line."""

_log = logging.getLogger(__name__)


def relay_config(conninfo: str, settings: RelaySettings) -> dict[str, Any]:
    """A relay process's configuration (the first line of its stdin, as JSON): where the database is,
    and the relay's settings (`RelaySettings.from_dict` reads them back)."""
    return {"conninfo": conninfo, "relay": dataclasses.asdict(settings)}


@dataclasses.dataclass(frozen=True, slots=True)
class _Exited:
    """The child process ended (the reader thread tells the actor)."""

    status: int


class RelayProcess(SupervisedActor):
    """The relay running in a child process (see the module docstring)."""

    def __init__(self, link: ChildLink, *, conninfo: str, settings: RelaySettings, stats: RelayStats,
                 command: tuple[str, ...] = RELAY_COMMAND) -> None:
        super().__init__(link)
        self._conninfo = conninfo
        self.settings = settings
        self.stats = stats
        self._command = command
        self._child: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it started)."""
        return None if self._child is None else self._child.pid

    # -- lifecycle ----------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Start the child and the reader of its figures."""
        child = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None
        self._child = child
        child.stdin.write(json.dumps(relay_config(self._conninfo, self.settings)).encode() + b"\n")
        child.stdin.flush()
        os.set_blocking(child.stdin.fileno(), False)
        self._reader = threading.Thread(target=self._read, args=(child,), daemon=True,
                                        name=f"relay-process-reader-{self.link.incarnation}")
        self._reader.start()

    def release(self) -> None:
        """Let the child finish (or kill it after stop_timeout), on a stop and on a crash alike."""
        self._end()

    # -- messages -----------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        if isinstance(message, Nudge):
            self._nudge()
        elif isinstance(message, _Exited):
            if not self._stopping:
                _log.error("the relay process %s exited with status %d; the supervisor starts another",
                           self.pid, message.status)
                self._end()  # gone already: this only closes its pipe
                self.report_broken(RuntimeError(f"the relay process exited with status {message.status}"))
        else:
            return super().on_receive(message)
        return None

    def _nudge(self) -> None:
        child = self._child
        if child is None or child.stdin is None:
            return
        # A full pipe holds nudges the child has not read yet; a closed one: the child ended (the
        # reader reports that).
        with contextlib.suppress(BlockingIOError, BrokenPipeError, ValueError):
            os.write(child.stdin.fileno(), b"n")

    def _read(self, child: subprocess.Popen[bytes]) -> None:
        """Add each figures line of the child into the stats; when it ends, tell the actor."""
        assert child.stdout is not None
        with child.stdout:
            for line in child.stdout:
                try:
                    self.stats.absorb(child.pid, RelayFigures(**json.loads(line)))
                except (ValueError, KeyError, TypeError):
                    _log.warning("the relay process %d wrote an unreadable line: %r", child.pid, line[:200])
        status = child.wait()
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_Exited(status))

    def _end(self) -> None:
        """Close the child's stdin (it finishes its pass and exits), kill it if it takes too long."""
        self._stopping = True
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(OSError):
            if child.stdin is not None:
                child.stdin.close()
        try:
            child.wait(timeout=self.settings.stop_timeout)
        except subprocess.TimeoutExpired:
            _log.warning("the relay process %d did not stop within %g s; killing it", child.pid,
                         self.settings.stop_timeout)
            child.kill()
            child.wait()
        if self._reader is not None:
            self._reader.join(timeout=self.settings.stop_timeout)
