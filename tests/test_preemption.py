"""What the log says when a stop is requested (issue 23, point 10): the step under way runs to
its end first, which for a Muon step on a CPU takes minutes; the message says how long."""

from __future__ import annotations

import logging
import signal

import pytest

from agop_sweep.run.preemption import Preempted, PreemptionGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_long_step_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = PreemptionGuard(clock)
    assert guard.requested is False  # the loop polls before each step
    clock.now += 390.0  # a 6.5-minute Muon step
    assert guard.requested is False
    clock.now += 120.0  # two minutes into the next one, SIGTERM
    with caplog.at_level(logging.WARNING, logger="agop_sweep.run.preemption"):
        guard._handle(signal.SIGTERM, None)
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == ("Received SIGTERM: the step in progress runs to its end first (the last one took "
                       "6.5 min, this one has run 2.0 min), then the state is saved")
    assert guard.requested is True
    with pytest.raises(Preempted):
        guard.check(3, 7)()


def test_short_steps_keep_the_short_message(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = PreemptionGuard(clock)
    for _ in range(3):
        assert not guard.requested
        clock.now += 0.03
    with caplog.at_level(logging.WARNING, logger="agop_sweep.run.preemption"):
        guard._handle(signal.SIGUSR1, None)
    assert [r.getMessage() for r in caplog.records] == ["Received SIGUSR1: saving state at the next step"]


def test_analysis_chunks_count_as_steps() -> None:
    clock = Clock()
    guard = PreemptionGuard(clock)
    poll = guard.check(epoch=5)
    poll()
    clock.now += 45.0
    poll()
    clock.now += 12.0
    assert guard.wait_note() == ("the step in progress runs to its end first (the last one took 45 s, "
                                 "this one has run 12 s), then the state is saved")
