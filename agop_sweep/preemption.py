"""Stop at the next step boundary on SIGTERM / SIGUSR1 / SIGUSR2 (what schedulers send).

The handler only sets a flag; the training loop polls it between steps, saves the
resumable state and raises :class:`Preempted`. Afterwards :meth:`PreemptionGuard.chain`
hands the signal to the handler that was installed before ours (under submitit that one
requeues the job), so the run resumes by itself on a cluster.
"""

from __future__ import annotations

import logging
import signal
import threading
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


class PreemptionGuard:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, epoch: int, step: int = -1) -> Callable[[], None]:
        """A callback for long loops (the analysis): raises Preempted once a signal came."""

        def poll() -> None:
            if self.signum is not None:
                raise Preempted(epoch, step)

        return poll

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("Received %s: saving state at the next step", signal.Signals(signum).name)

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
