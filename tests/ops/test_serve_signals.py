"""Before gunicorn takes over, a stop signal ends the start, but never halfway through starting or
stopping the embedded server: there it waits for the step to finish."""

from __future__ import annotations

import signal

import pytest

from tradeengine.ops.server import _Interrupted, _StopSignals


def test_a_stop_signal_interrupts_at_once_outside_a_deferred_step() -> None:
    signals = _StopSignals()
    with pytest.raises(_Interrupted) as caught, signals.installed():
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("not interrupted")
    assert caught.value.signum == signal.SIGTERM


def test_a_stop_signal_during_a_deferred_step_waits_for_the_step_to_finish() -> None:
    signals = _StopSignals()
    finished = False
    with pytest.raises(_Interrupted) as caught, signals.installed():
        with signals.deferred():
            signal.raise_signal(signal.SIGINT)
            finished = True
        pytest.fail("not interrupted after the step")
    assert finished
    assert caught.value.signum == signal.SIGINT


def test_only_the_first_stop_signal_counts_so_the_clean_up_is_not_cut_short() -> None:
    signals = _StopSignals()
    cleaned_up = False
    with pytest.raises(_Interrupted), signals.installed():
        try:
            signal.raise_signal(signal.SIGTERM)
        finally:
            with signals.deferred():
                signal.raise_signal(signal.SIGTERM)  # a second signal during the clean-up
                cleaned_up = True
    assert cleaned_up


def test_previous_handlers_come_back_afterwards() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with _StopSignals().installed():
        assert signal.getsignal(signal.SIGTERM) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
