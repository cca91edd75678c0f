"""The writer's process: the engine side of ``python -m tradeengine.ops.writer_main``.

With ``TRADE_ENGINE_WRITER_PROCESS=true`` the persistence writer (`actors.writer.PersistenceActor`) keeps
everything that is about callers (the pending list, group commit, replies after the commit, barriers,
breaking and the group's rebuild) and sends each batch's facts to a child process, which builds the
rows and commits them on its own connection (see `ops.writer_main`). The writer's thread then only
pickles the facts and waits on a pipe, with the GIL released: building rows, rendering them and
psycopg's work (~2–3 ms of the engine's GIL per commit under load) happen on the other core.

Protocol, over the child's stdin and stdout:
- stdin: the first line is the configuration (one JSON object: conninfo, commit_timeout,
  connect_timeout, lock_timeout); then one frame per batch: the list of its facts (`storage.facts`),
  pickled. End of file: the engine stops or is gone; the child exits once its batch is committed.
- stdout: one frame per event: ``("ready", pid)`` once connected and in charge (its writer epoch
  claimed), then per batch ``("ok", rows)`` after its COMMIT, or ``("unavailable" | "error", message)``
  (the child then exits).
A frame is a 4-byte big-endian length and that many bytes of pickle (trusted: our own child).

A reply that does not come within `reply_timeout` (the child hangs, or died without a word): the child is
killed and the batch's outcome is unknown (`StorageUnavailable`); the group's rebuild reads what the
database holds, after the next child has claimed the writer fence (see `ops.writer_main`): no batch
of an older writer commits after that.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from typing import IO, Any

from tradeengine.storage.errors import StorageError, StorageUnavailable
from tradeengine.storage.facts import Facts

__all__ = ["WRITER_COMMAND", "WriterProcess", "read_frame", "reply", "write_frame"]

WRITER_COMMAND = (sys.executable, "-m", "tradeengine.ops.writer_main")
"""The child's command line."""

_LENGTH = struct.Struct(">I")


def write_frame(stream: IO[bytes], value: object) -> None:
    """Write one frame (length, pickle) and flush."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """Read one frame; None at end of file (also in the middle of a frame: the writer of it is gone)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    data = stream.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)


def reply(exc: BaseException) -> tuple[str, str]:
    """The child's frame for a failed batch (or start): ``unavailable`` for a database away, else
    ``error``."""
    return ("unavailable" if isinstance(exc, StorageUnavailable) else "error", str(exc) or repr(exc))


class WriterProcess:
    """One writer child: start it, hand it batches, end it."""

    def __init__(self, conninfo: str, *, commit_timeout: float, connect_timeout: float,
                 command: tuple[str, ...] = WRITER_COMMAND) -> None:
        self._conninfo = conninfo
        self._commit_timeout = commit_timeout
        self._connect_timeout = connect_timeout
        self._command = command
        self._child: subprocess.Popen[bytes] | None = None
        self._buffer = bytearray()

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it started)."""
        return None if self._child is None else self._child.pid

    @property
    def reply_timeout(self) -> float:
        """Seconds a batch's answer may take: its statements are bounded by commit_timeout each."""
        return 3 * self._commit_timeout + 5.0

    def start(self) -> None:
        """Start the child; return once it is in charge (StorageUnavailable/StorageError otherwise).

        Its claim of the writer fence waits for a batch of an earlier writer still running: that takes
        at most one batch's answer, so the wait is bounded by `reply_timeout`.
        """
        child = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._child = child
        assert child.stdin is not None
        config = {"conninfo": self._conninfo, "commit_timeout": self._commit_timeout,
                  "connect_timeout": self._connect_timeout, "lock_timeout": self.reply_timeout}
        try:
            child.stdin.write(json.dumps(config).encode() + b"\n")
            child.stdin.flush()
            answer = self._answer(self._connect_timeout + self.reply_timeout + 5.0, "start")
        except BaseException:
            self.close(timeout=1.0)
            raise
        if answer[0] != "ready":
            self.close(timeout=1.0)
            _raise(answer, "the writer process did not start")

    def write(self, facts: list[Facts]) -> int:
        """Commit `facts` in the child; return the rows written. Raises StorageUnavailable (database away,
        or the outcome unknown: the child is then gone) or StorageError (nothing written)."""
        child = self._child
        if child is None or child.stdin is None:
            raise StorageUnavailable("the writer process is not running")
        try:
            write_frame(child.stdin, facts)
        except OSError as exc:
            self.close(timeout=0.0)
            raise StorageUnavailable(f"the writer process is gone ({exc})") from exc
        answer = self._answer(self.reply_timeout, "commit")
        if answer[0] == "ok":
            return int(answer[1])
        self.close(timeout=1.0)  # the child exits after a failed batch
        _raise(answer, "committing a batch of facts")
        raise AssertionError("unreachable")

    def close(self, timeout: float) -> None:
        """Close the child's stdin (it exits after its batch); kill it after `timeout` seconds."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            if child.stdin is not None:
                child.stdin.close()
        except OSError:
            pass
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        self._buffer.clear()

    def _answer(self, timeout: float, what: str) -> tuple[Any, ...]:
        """The child's next frame within `timeout` s; else kill it and raise StorageUnavailable."""
        child = self._child
        assert child is not None and child.stdout is not None
        fd = child.stdout.fileno()
        deadline = time.monotonic() + timeout
        buffer = self._buffer
        while True:
            if len(buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(buffer)
                if len(buffer) >= _LENGTH.size + length:
                    answer = pickle.loads(buffer[_LENGTH.size:_LENGTH.size + length])
                    del buffer[:_LENGTH.size + length]
                    return tuple(answer)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.close(timeout=0.0)  # killed: it must not commit this batch later
                raise StorageUnavailable(f"the writer process did not answer within {timeout:g} s "
                                         f"({what}; the outcome is unknown)")
            chunk = os.read(fd, 65536)
            if not chunk:
                self.close(timeout=1.0)
                raise StorageUnavailable(f"the writer process exited with status {child.returncode} "
                                         f"({what}; the outcome is unknown)")
            buffer += chunk


def _raise(answer: tuple[Any, ...], action: str) -> None:
    kind, message = answer[0], str(answer[1]) if len(answer) > 1 else ""
    if kind == "unavailable":
        raise StorageUnavailable(f"{action}: {message}")
    raise StorageError(f"{action}: {message}")
