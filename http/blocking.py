"""Blocking calls from the event loop's responders.

The app is served by one event loop (see :mod:`tradeengine.ops.http_worker`). A responder never waits
on I/O on the loop: what blocks (a database read, a Redis call, an actor's answer) runs through
:func:`blocking` on a thread of the loop's executor (``http-blocking-N`` under ``serve``, as many as
``TRADE_ENGINE_HTTP_THREADS``), while the loop answers other requests. The hot path, placing orders,
needs no thread: it awaits the engine's futures on the loop (:meth:`Exchange.place_batch_async`).

Every blocking call is bounded (`limit_blocking_calls`; ``serve``: the request timeout + 2 s): a database
that hangs (a stopped server keeps its connections open, and a query on one waits for ever) must not
hold a request. Past the limit the request is answered with `NoAnswerInTime` (a read 503, a change 504:
its outcome is unknown) while the thread finishes on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from tradeengine.engine.errors import EngineTimeout

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_LIMIT = 10.0
"""Seconds a blocking call may take unless `limit_blocking_calls` says otherwise."""


class NoAnswerInTime(EngineTimeout):
    """A blocking call did not return within the limit; the request is answered without it."""


@dataclasses.dataclass(slots=True)
class _Limit:
    seconds: float


_limit = _Limit(DEFAULT_LIMIT)


def limit_blocking_calls(seconds: float) -> None:
    """Bound every later blocking call to `seconds` (for the one app of this process)."""
    if not seconds > 0:
        raise ValueError(f"the limit must be greater than 0, got {seconds}")
    _limit.seconds = seconds


async def blocking(call: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``call`` on a thread of the running loop's executor and return its result; the request's
    context (its id, see :mod:`tradeengine.http.middleware`) goes along. `NoAnswerInTime` when it takes
    longer than the limit."""
    seconds = _limit.seconds
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            return await asyncio.to_thread(call, *args, **kwargs)
    except TimeoutError:
        if not scope.expired():
            raise  # the call's own timeout
        what = getattr(call, "__qualname__", call)
        raise NoAnswerInTime(f"no answer within {seconds:g} s ({what})") from None
