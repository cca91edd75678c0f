"""OutageGate: one probe per interval while a service is down, warnings at most once per interval."""

from __future__ import annotations

from tradeengine.storage.outage import OutageGate


def test_while_down_one_caller_per_retry_interval_tries_again_and_a_success_ends_the_outage() -> None:
    now = [0.0]
    gate = OutageGate(retry_interval=1.0, warn_interval=60.0, clock=lambda: now[0])
    assert gate.should_try() and not gate.down
    assert gate.failed() == 0.0  # the first failure: a warning is due
    assert gate.down and not gate.should_try()
    now[0] = 1.0
    assert gate.should_try()  # the probe
    assert not gate.should_try()  # the others fall back
    now[0] = 1.5
    assert gate.succeeded() == (1.5, True)
    assert not gate.down and gate.should_try()
    assert gate.succeeded() is None


def test_warnings_are_due_at_most_once_per_warn_interval_across_outages() -> None:
    now = [0.0]
    gate = OutageGate(retry_interval=1.0, warn_interval=60.0, clock=lambda: now[0])
    assert gate.failed() == 0.0
    now[0] = 30.0
    assert gate.failed() is None
    now[0] = 40.0
    assert gate.succeeded() == (40.0, True)
    now[0] = 50.0
    assert gate.failed() is None  # a new outage within the interval: not warned again
    now[0] = 55.0
    assert gate.succeeded() == (5.0, False)
    now[0] = 61.0
    assert gate.failed() == 0.0
