"""Stop at the next step boundary on SIGTERM / SIGUSR1 / SIGUSR2 (what schedulers send).

The handler only sets a flag; the training loop polls it between steps, saves the
resumable state and raises :class:`Preempted`. A step that is under way when the signal comes
runs to its end first, which can take minutes (a Muon step on a CPU: 6.5 min on an AVX2
machine), so the handler says in the log how long the last step took and how long this one
has run: the times between the loop's polls. Afterwards :meth:`PreemptionGuard.chain`
hands the signal to the handler that was installed before ours (under submitit that one
requeues the job), so the run resumes by itself on a cluster.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2")) if s is not None
)


class Preempted(Exception):
    """The run stopped on request at ``epoch``/``step`` after saving its state."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"preempted at epoch {epoch} step {step}")
        self.epoch, self.step = epoch, step


# Below this many seconds of waiting the log does not mention the step in progress.
NOTABLE_WAIT_S = 10.0


class PreemptionGuard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._clock = clock
        self._polls: list[float] = []  # the times of the last two polls: a step lies between them

    def _polled(self) -> None:
        self._polls = [*self._polls[-1:], self._clock()]

    @property
    def requested(self) -> bool:
        self._polled()
        return self.signum is not None

    def check(self, epoch: int, step: int = -1) -> Callable[[], None]:
        """A callback for long loops (the analysis): raises Preempted once a signal came."""

        def poll() -> None:
            self._polled()
            if self.signum is not None:
                raise Preempted(epoch, step)

        return poll

    def wait_note(self) -> str:
        """What the stop waits for: the step (or analysis chunk) under way runs to its end; with
        how long the last one took and how long this one has run, when that is worth saying."""
        if not self._polls:
            return "saving state at the next step"
        now = self._clock()
        running = now - self._polls[-1]
        last = self._polls[-1] - self._polls[-2] if len(self._polls) > 1 else None
        if max(running, last or 0.0) < NOTABLE_WAIT_S:
            return "saving state at the next step"
        took = f"the last one took {_duration(last)}, " if last is not None else ""
        return (f"the step in progress runs to its end first ({took}this one has run {_duration(running)}), "
                "then the state is saved")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("Received %s: %s", signal.Signals(signum).name, self.wait_note())

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def chain(self) -> None:
        """After the state is saved: give the signal to the previous handler (submitit's
        requeue), or exit with the conventional 128 + signal number."""
        if self.signum is None:
            return
        previous = self._previous.get(self.signum)
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(self.signum, None)
        raise SystemExit(128 + self.signum)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
