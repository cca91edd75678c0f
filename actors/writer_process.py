"""The writer's process: the engine side of ``python -m tradeengine.ops.writer_main``.

With ``TRADE_ENGINE_WRITER_PROCESS=true`` the persistence writer (`actors.writer.PersistenceActor`) keeps
everything that is about callers (the pending list, replies after the commit, barriers, breaking and the
group's rebuild) and sends the facts of its flushes to a child process, which builds the rows and
commits them on its own connection (see `ops.writer_main`). Building rows, rendering them and psycopg's
work (~100 µs of CPU per command) happen on the other core, outside the engine's GIL.

Pipelined: the writer does not wait for a batch's answer before it sends the next one. The child builds
the rows of the next batch (every frame that comes meanwhile, up to ``max_batch`` facts) while the
current one commits, so the database and the child's CPU work at the same time instead of in turn. A
reader thread here takes the child's answers and hands them, with the tokens of the frames they cover,
to the ``committed`` / ``failed`` callbacks (in the reader's thread: the writer resolves its callers'
replies there, without a hop through its inbox).

Protocol, over the child's stdin and stdout:
- stdin: the first line is the configuration (one JSON object: conninfo, commit_timeout,
  connect_timeout, lock_timeout, max_batch, prepare); then one frame per flush: the list of its facts
  (`storage.facts`) as `storage.facts_wire` encodes them (JSON, ~5x cheaper to make than pickle, and made
  under the engine's GIL). End of file: the engine stops or is gone; the child commits what it was
  sent, answers, and exits.
- stdout: one frame per event: ``("ready", pid)`` once connected and in charge (its writer epoch
  claimed), then per committed batch ``("ok", frames, rows, seconds)``: the next `frames` frames, in the
  order sent, are committed (`seconds`: the commit's round trip); or ``("unavailable" | "error",
  message)``: the next batch failed, nothing of it or of any later frame is committed, the child exits;
  or ``("unknown", message, frames)``: its connection was lost before the COMMIT's answer, so the batch
  of the next `frames` frames may have committed (nothing later is), the child exits.
A frame is a 4-byte big-endian length and that many bytes (the child's answers: pickle, trusted, our own
child).

A batch whose answer does not come within `reply_timeout` of the previous answer (or of its sending, if
nothing was outstanding): the child is killed and every frame still outstanding fails as "outcome
unknown" (`CommitOutcomeUnknown`, also for a child that answers ``unknown``); the group's rebuild
reads what the database holds, after the next child has claimed the writer fence (see
`ops.writer_main`): no batch of an older writer commits after that. A child that exits unasked (even
with nothing outstanding) is reported the same way.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from tradeengine.storage.errors import CommitOutcomeUnknown, StorageError, StorageUnavailable
from tradeengine.storage.facts import Facts
from tradeengine.storage.facts_wire import FactsEncoder

__all__ = ["WRITER_COMMAND", "FrameReader", "WriterProcess", "reply", "write_data", "write_frame"]

WRITER_COMMAND = (sys.executable, "-m", "tradeengine.ops.writer_main")
"""The child's command line."""

_LENGTH = struct.Struct(">I")

_log = logging.getLogger(__name__)

Token = list[Any]
"""What the writer hands in with a frame and gets back with its outcome (its batch of messages)."""

Committed = Callable[[list[Token], int, float], None]
"""``committed(tokens, rows, seconds)``: the frames of `tokens` are committed, in one transaction."""

Failed = Callable[[list[Token], StorageError], None]
"""``failed(tokens, error)``: the frames of `tokens` are not committed (or their outcome is unknown)."""


def write_frame(stream: IO[bytes], value: object) -> None:
    """Write one frame of `value` pickled, and flush."""
    write_data(stream, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def write_data(stream: IO[bytes], data: bytes) -> None:
    """Write one frame of `data` (already encoded), and flush."""
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


class FrameReader:
    """Frames from a pipe's file descriptor, read in chunks (several frames may come in one)."""

    NOTHING: Any = object()
    """What `read` returns when no whole frame came within its timeout."""

    def __init__(self, fd: int, buffer: bytes = b"",
                 decode: Callable[[bytearray], Any] = pickle.loads) -> None:
        """`decode` makes a frame's value of its bytes: unpickling, or `FactsDecoder.decode` for the
        frames of facts."""
        self._fd = fd
        self._decode = decode
        self._buffer = bytearray(buffer)
        self.ended = False

    def read(self, timeout: float | None = None, *, wake: int | None = None) -> Any:
        """The next frame; `NOTHING` if none is whole within `timeout` s (None: wait), or as soon as the
        file descriptor `wake` has something to read (it is read empty); None at the end of the pipe
        (also in the middle of a frame: its writer is gone)."""
        buffer = self._buffer
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(buffer)
                if len(buffer) >= _LENGTH.size + length:
                    frame = self._decode(buffer[_LENGTH.size:_LENGTH.size + length])
                    del buffer[:_LENGTH.size + length]
                    return frame
            if self.ended:
                return None
            if deadline is not None or wake is not None:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                watched = [self._fd] if wake is None else [self._fd, wake]
                readable = select.select(watched, [], [], remaining)[0]
                if wake is not None and wake in readable:
                    os.read(wake, 1 << 16)  # a pipe holds 64 KiB: read empty
                    return self.NOTHING
                if not readable:
                    return self.NOTHING
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                self.ended = True
                return None
            buffer += chunk


def reply(exc: BaseException) -> tuple[str, str]:
    """The child's frame for a failed batch (or start): ``unknown`` for a commit whose outcome is unknown,
    ``unavailable`` for a database away, else ``error``."""
    kind = ("unknown" if isinstance(exc, CommitOutcomeUnknown) else
            "unavailable" if isinstance(exc, StorageUnavailable) else "error")
    return kind, str(exc) or repr(exc)


class WriterProcess:
    """One writer child: start it, send it frames of facts, hear their outcome, end it."""

    def __init__(self, conninfo: str, *, commit_timeout: float, connect_timeout: float,
                 max_batch: int = 2000, prepare: bool = True,
                 command: tuple[str, ...] = WRITER_COMMAND) -> None:
        """`prepare`: whether the child's connection uses server-side prepared statements (not behind
        PgBouncer in transaction mode before 1.21; see `storage.writer`)."""
        self._conninfo = conninfo
        self._prepare = prepare
        self._commit_timeout = commit_timeout
        self._connect_timeout = connect_timeout
        self._max_batch = max_batch
        self._command = command
        self._encoder = FactsEncoder()  # used by `send` alone (the writer's thread)
        self._child: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the four below (the writer's thread and the reader's)
        self._outstanding: collections.deque[Token] = collections.deque()
        self._waiting_since = 0.0  # when the oldest outstanding frame began to wait for its answer
        self._ended: StorageError | None = None  # the child failed or is gone: no more frames
        self._closing = False
        self._committed: Committed | None = None
        self._failed: Failed | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it started)."""
        return None if self._child is None else self._child.pid

    @property
    def reply_timeout(self) -> float:
        """Seconds a batch's answer may take: its statements are bounded by commit_timeout each."""
        return 3 * self._commit_timeout + 5.0

    def start(self, committed: Committed, failed: Failed) -> None:
        """Start the child; return once it is in charge (StorageUnavailable/StorageError otherwise).

        Its claim of the writer fence waits for a batch of an earlier writer still running: that takes
        at most one batch's answer, so the wait is bounded by `reply_timeout`. From then on the
        outcome of every frame sent goes to `committed` or `failed`, called from the reader thread.
        """
        self._committed, self._failed = committed, failed
        child = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._child = child
        assert child.stdin is not None and child.stdout is not None
        config = {"conninfo": self._conninfo, "commit_timeout": self._commit_timeout,
                  "connect_timeout": self._connect_timeout, "lock_timeout": self.reply_timeout,
                  "max_batch": self._max_batch, "prepare": self._prepare}
        frames = FrameReader(child.stdout.fileno())
        try:
            child.stdin.write(json.dumps(config).encode() + b"\n")
            child.stdin.flush()
            answer = frames.read(self._connect_timeout + self.reply_timeout + 5.0)
        except BaseException:
            self._kill()
            raise
        if answer is FrameReader.NOTHING or answer is None or answer[0] != "ready":
            self._kill()
            if answer is FrameReader.NOTHING:
                raise StorageUnavailable("the writer process did not start in time")
            if answer is None:
                raise StorageUnavailable(f"the writer process exited with status {child.wait()}")
            raise _error(answer, "the writer process did not start")
        self._reader = threading.Thread(target=self._read, args=(child, frames), daemon=True,
                                        name=f"writer-process-reader-{child.pid}")
        self._reader.start()

    def send(self, facts: list[Facts], token: Token) -> None:
        """Send `facts` to be committed; their outcome comes with `token` to `committed` or `failed`.

        Raises StorageUnavailable, and the token is not taken, when the child has ended (failed, gone,
        or closed). A write blocks while the pipe is full; a child that stops answering is killed by the
        reader (after `reply_timeout`), which ends that wait too.
        """
        data = self._encoder.encode(facts)
        child = self._child
        with self._lock:
            if self._ended is not None or self._closing or child is None or child.stdin is None:
                why = self._ended or ("closed" if self._closing else "not started")
                raise StorageUnavailable(f"the writer process has ended: {why}")
            if not self._outstanding:
                self._waiting_since = time.monotonic()
            self._outstanding.append(token)
        with contextlib.suppress(OSError, ValueError):  # the child is gone: the reader fails the frame
            write_data(child.stdin, data)

    def attach(self, item: object) -> bool:
        """Add `item` to the token of the last frame still outstanding, so that it comes back with its
        outcome; False when nothing is outstanding."""
        with self._lock:
            if not self._outstanding or self._ended is not None:
                return False
            self._outstanding[-1].append(item)
            return True

    def close(self, timeout: float) -> None:
        """End the child: close its stdin (it commits what it was sent, answers, exits); kill it after
        `timeout` s. Returns once every outstanding frame's outcome has been handed out."""
        child = self._child
        if child is None:
            return
        with self._lock:
            self._closing = True
        try:
            if child.stdin is not None:
                child.stdin.close()
        except OSError:
            pass
        _end_child(child, timeout)
        if self._reader is not None:
            self._reader.join()
        if child.stdout is not None:
            child.stdout.close()

    def _kill(self) -> None:
        """Kill a child that did not start (it is forgotten: `pid` is None again)."""
        child, self._child = self._child, None
        if child is not None:
            _end_child(child, 0.0)
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()

    def _read(self, child: subprocess.Popen[bytes], frames: FrameReader) -> None:
        """The reader thread: hand out each answer; kill a child that stops answering; report its end.
        A bug here (an answer that cannot be read or does not fit) kills the child and fails what is
        outstanding, rather than leave its callers waiting with nobody to answer them."""
        try:
            self._read_answers(child, frames)
        except BaseException as exc:
            _log.exception("writer process %d: its reader failed; the child is killed", child.pid)
            _end_child(child, 0.0)
            self._end(CommitOutcomeUnknown(f"the writer process's reader failed ({exc!r}; the outcome is "
                                           "unknown)"))

    def _read_answers(self, child: subprocess.Popen[bytes], frames: FrameReader) -> None:
        while True:
            with self._lock:
                waiting = self._waiting_since + self.reply_timeout - time.monotonic() \
                    if self._outstanding else None
            answer = frames.read(1.0 if waiting is None else max(0.0, waiting))
            if answer is FrameReader.NOTHING:
                with self._lock:
                    late = bool(self._outstanding) and \
                        time.monotonic() - self._waiting_since >= self.reply_timeout
                if late:
                    _end_child(child, 0.0)  # it must not commit these later
                    self._end(CommitOutcomeUnknown(
                        f"the writer process did not answer within {self.reply_timeout:g} s "
                        "(the outcome is unknown)"))
                    return
                continue
            if answer is None:
                status = child.wait()
                with self._lock:
                    quiet = self._closing and not self._outstanding
                if not quiet:
                    self._end(CommitOutcomeUnknown(f"the writer process exited with status {status} "
                                                   "(the outcome is unknown)"))
                return
            if answer[0] == "ok":
                self._hand_out_committed(int(answer[1]), int(answer[2]), float(answer[3]))
            else:  # the child exits after a failed batch
                error = _error(answer, "the writer process")  # its message names the commit
                # An unknown outcome concerns that batch's frames only: none later is committed.
                self._end(error, frames=int(answer[2]) if isinstance(error, CommitOutcomeUnknown) else None)
                _end_child(child, self.reply_timeout)
                return

    def _hand_out_committed(self, frames: int, rows: int, seconds: float) -> None:
        with self._lock:
            if not 0 < frames <= len(self._outstanding):
                raise RuntimeError(f"an answer for {frames} frame(s), {len(self._outstanding)} outstanding")
            tokens = [self._outstanding.popleft() for _ in range(frames)]
            self._waiting_since = time.monotonic()
        assert self._committed is not None
        self._committed(tokens, rows, seconds)

    def _end(self, error: StorageError, frames: int | None = None) -> None:
        """The child failed or is gone: no frame is taken any more; the outstanding ones fail with
        `error`, or only the first `frames` of them, the rest as not committed."""
        with self._lock:
            self._ended = self._ended or error
            tokens = list(self._outstanding)
            self._outstanding.clear()
        assert self._failed is not None
        if frames is None:
            self._failed(tokens, error)
            return
        self._failed(tokens[:frames], error)
        if tokens[frames:]:
            self._failed(tokens[frames:], StorageUnavailable(
                f"not committed: the writer process ended after an earlier batch failed ({error})"))


def _end_child(child: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to `timeout` s for the child to exit, then kill it; reaped either way."""
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _error(answer: tuple[Any, ...], action: str) -> StorageError:
    kind, message = answer[0], str(answer[1]) if len(answer) > 1 else ""
    if kind == "unknown":
        return CommitOutcomeUnknown(f"{action}: {message}")
    if kind == "unavailable":
        return StorageUnavailable(f"{action}: {message}")
    return StorageError(f"{action}: {message}")
