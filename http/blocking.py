"""Blocking calls from the event loop's responders.

The app is served by one event loop (see :mod:`tradeengine.ops.http_worker`). A responder never waits
on I/O on the loop: what blocks (a database read, a Redis call, an actor's answer) runs through
:func:`blocking` on a thread of the loop's executor (``http-blocking-N`` under ``serve``, as many as
``TRADE_ENGINE_HTTP_THREADS``), while the loop answers other requests. The hot path, placing orders,
needs no thread: it awaits the engine's futures on the loop (:meth:`Exchange.place_batch_async`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


async def blocking(call: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``call`` on a thread of the running loop's executor and return its result; the request's
    context (its id, see :mod:`tradeengine.http.middleware`) goes along."""
    return await asyncio.to_thread(call, *args, **kwargs)
