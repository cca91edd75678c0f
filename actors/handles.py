"""Stable handles: what callers keep forever to reach a supervised child, whatever its incarnation.

A handle holds only the supervisor and the child's name; every call looks the child up in the
supervisor's directory (never pykka's global registry) and goes to the CURRENT incarnation.

Delivery rules:
- `ask` waits, up to its timeout, for a restarting child to be running again, then sends once.
  A reply always comes from the incarnation the message was delivered to (one pykka future per ask),
  so an answer from a dead incarnation can never be mistaken for one from its successor.
- If the incarnation dies before handling the message (pykka answers ActorDeadError naming that very
  actor: the message was never handled), the handle resends it to the next incarnation within the same
  timeout. Any other outcome is not retried: at most one incarnation handles a message.
- A child that is failed, stopped or removed raises ActorUnavailable at once; one still restarting
  when the timeout runs out raises ActorUnavailable; a live one that does not answer in time raises
  ActorTimeout (the outcome is unknown).
- `tell` never waits: it raises ActorUnavailable unless the child is running now.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pykka
from pykka.messages import ProxyCall

from .supervision import ActorTimeout, ActorUnavailable, ChildState

if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = ["ChildHandle"]


class ChildHandle:
    """A caller's lasting reference to the named child; survives restarts."""

    __slots__ = ("_name", "_supervisor")

    def __init__(self, supervisor: Supervisor, name: str) -> None:
        self._supervisor = supervisor
        self._name = name

    def __repr__(self) -> str:
        return f"ChildHandle({self._name!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ChildHandle) and other._supervisor is self._supervisor
                and other._name == self._name)

    def __hash__(self) -> int:
        return hash((id(self._supervisor), self._name))

    @property
    def name(self) -> str:
        """The child's stable name."""
        return self._name

    @property
    def state(self) -> ChildState:
        """The child's state now."""
        return self._supervisor.status(self._name).state

    @property
    def incarnation(self) -> int:
        """The child's current (or starting) incarnation."""
        return self._supervisor.status(self._name).incarnation

    def ask(self, message: Any, timeout: float) -> Any:
        """Send `message` to the current incarnation and return its reply, waiting at most `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            ref, incarnation = self._supervisor._await_running(self._name, deadline, timeout)
            try:
                return ref.ask(message, timeout=max(deadline - time.monotonic(), 0.0))
            except pykka.Timeout as exc:
                raise ActorTimeout(
                    f"{self._name} #{incarnation} did not answer within {timeout} s; outcome unknown",
                    child=self._name,
                ) from exc
            except pykka.ActorDeadError as exc:
                if not _died_before_handling(ref, exc):
                    raise  # raised by the child's own handler: it is the child's answer
                # Never handled by that incarnation: safe to send to its successor.

    def call(self, method: str, *args: Any, timeout: float, **kwargs: Any) -> Any:
        """Call `method` on the current incarnation (a pykka proxy call without a proxy object)."""
        return self.ask(ProxyCall(attr_path=(method,), args=args, kwargs=kwargs), timeout)

    def tell(self, message: Any, wait: float = 0.0) -> None:
        """Send `message` to the current incarnation without waiting for an answer.

        While the child is restarting, wait up to `wait` seconds for its next incarnation; then, or at
        once when it is stopped or failed, raise ActorUnavailable.
        """
        ref, _ = self._supervisor._await_running(self._name, time.monotonic() + wait, wait)
        try:
            ref.tell(message)
        except pykka.ActorDeadError as exc:  # died between the lookup and the send
            raise ActorUnavailable(f"{self._name} died; restarting", child=self._name,
                                   state=ChildState.RESTARTING) from exc

    def ask_future(self, message: Any) -> pykka.Future[Any]:
        """Send `message` to the current incarnation and return the future at once (for actors).

        Raises ActorUnavailable unless the child is running now. The future is bound to this incarnation.
        """
        ref, _ = self._supervisor._await_running(self._name, time.monotonic(), 0.0)
        return ref.ask(message, block=False)


def _died_before_handling(ref: pykka.ActorRef[Any], error: pykka.ActorDeadError) -> bool:
    # pykka names the dead actor in both of its own ActorDeadErrors ("... not found", "... stopped
    # before handling the message"); an ActorDeadError about another actor came from the handler.
    return not ref.is_alive() and ref.actor_urn in str(error)
