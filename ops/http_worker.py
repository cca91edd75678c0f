"""The gunicorn worker of ``trade-engine serve``: gthread, keeping a busy keep-alive connection on its thread.

gunicorn's gthread worker hands every keep-alive connection back to its main thread after each request:
the socket goes back into the poller, and when the client's next request arrives the main thread
submits the connection to the thread pool again. That is two thread hand-offs per request, and in one
process under the GIL each costs far more than its work (a GIL hand-over, a futex wake-up, the poller's
loop): `trade-engine bench http` measured /health at ~290 µs of server CPU per request on a bare Falcon
app under gthread.

`KeepAliveThreadWorker` is gthread with one change: after answering a request on a keep-alive
connection, the thread waits up to `KEEP_WAIT` seconds for that client's next request and answers it
itself, as long as no other connection is waiting for a thread. A connection whose client pauses longer,
or any connection while others are queued, goes back to the poller exactly as in gthread; so a thread is
never held by an idle client for more than `KEEP_WAIT`, and never while another client waits for a thread.
Everything else (accepting, timeouts, graceful stop with ``Connection: close``, HTTP/2, SSL) is gthread's
own code. Its request threads are named ``http-request-N`` (`ops.threadcpu` reports their CPU as
"http"). Measured back to back with the same engine and bench (README "Benchmarks"): /health answers
~2,200 → ~3,100/s, single orders ~620 → ~660/s, with lower p50 and p99.

It relies on gthread's internals of gunicorn 27 (`ThreadWorker.handle` answering one request and
returning True for a connection to keep alive, `enqueue_req`, the parser's read-ahead buffer), hence
the ``gunicorn>=27,<28`` requirement; a test drives it through a real gunicorn.
"""

from __future__ import annotations

import select
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

__all__ = ["KEEP_WAIT", "KeepAliveThreadWorker"]

KEEP_WAIT = 0.01
"""Seconds a thread waits for the next request of the keep-alive connection it just answered: at most
that much delay for a connection queued meanwhile (5 and 20 ms measured alike with 16 and 64 clients)."""


class KeepAliveThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, answering a keep-alive client's next request on the same thread (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued = 0  # connections submitted to the thread pool and not yet picked up by a thread
        self._queued_lock = threading.Lock()

    def get_thread_pool(self) -> ThreadPoolExecutor:
        """gthread's pool, its threads named "http-request-N" (their CPU is reported by that name)."""
        return ThreadPoolExecutor(max_workers=self.cfg.threads, thread_name_prefix="http-request")

    def enqueue_req(self, conn: Any) -> None:
        """Submit a connection to the thread pool (gthread's), counting it as waiting for a thread."""
        with self._queued_lock:
            self._queued += 1
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """Answer the connection's request, then its client's next ones while they follow quickly."""
        with self._queued_lock:
            self._queued -= 1
        result = super().handle(conn)
        while result is True and self.alive and not self._queued and self._next_request_arrives(conn):
            result = super().handle(conn)
        return result

    @staticmethod
    def _next_request_arrives(conn: Any) -> bool:
        """Whether the client's next request is here (read ahead already) or arrives within KEEP_WAIT."""
        sock = conn.sock
        if conn.parser.unreader.buf.getvalue() or (hasattr(sock, "pending") and sock.pending()):
            return True  # bytes read ahead: by the parser, or decrypted already by SSL
        poller = select.poll()  # not select(): it fails on descriptors past FD_SETSIZE
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(KEEP_WAIT * 1000))
