"""Step times of an engine seen only through its drafter, which it calls once per step.

From the end of one drafter call to the start of the next, the engine ran one target step: the verify of
the drafts handed over at the first call (plus scheduling and sampling). The drafter's own time is
counted apart, so ``auto`` can weigh a wider verify against what it saves.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StepClock:
    def __init__(self, now: Callable[[], float] = time.perf_counter):
        self.now = now
        self.started: float | None = None
        self.ended: float | None = None

    def begin(self) -> float | None:
        """A drafter call starts: seconds the engine's step took since the last call ended (None at first)."""
        self.started = self.now()
        return None if self.ended is None else self.started - self.ended

    def end(self) -> float:
        """The call ends: its own seconds."""
        self.ended = self.now()
        return self.ended - (self.started if self.started is not None else self.ended)
