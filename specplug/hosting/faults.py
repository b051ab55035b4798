"""Plugin faults: a proposer (or a draft policy) that raises, or drafts what no engine can verify, costs
its own rows their drafts for that step and nothing else. Its rows go on with plain decoding, which is
lossless. Every host counts faults the same way, by strategy and stage, and logs the first of each
strategy once.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger("specplug.hosting")
WHERE = {"propose": "proposer.propose", "on_verified": "proposer.on_verified", "release": "proposer.release",
         "policy": "its draft policy"}
MAX_CAUSE = 300  # characters of an exception's message kept in a log line or an error


def cause(exc: BaseException) -> str:
    """``Type: message`` on one line, cut to a readable length."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= MAX_CAUSE else text[: MAX_CAUSE - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class Fault:
    strategy: str
    stage: str  # "propose", "on_verified", "release" or "policy" (the strategy's draft policy, auto)
    cause: str


class PluginFaults:
    """The plugin faults one host has seen: counted, the first of each strategy logged."""

    def __init__(self, log: logging.Logger = logger):
        self.log = log  # the host's logger
        self.counts: Counter[tuple[str, str]] = Counter()  # (strategy, stage) -> faults
        self.pending: list[Fault] = []  # since the last ``take``
        self._logged: weakref.WeakSet = weakref.WeakSet()  # strategies whose first fault is logged

    def record(self, strategy, stage: str, exc: BaseException, rows: Sequence) -> None:
        """``strategy``'s proposer failed at ``stage`` for ``rows``: they decode plainly from now on."""
        for row in rows:
            row.plain = True
        fault = Fault(strategy.name, stage, cause(exc))
        self.counts[(fault.strategy, stage)] += 1
        self.pending.append(fault)
        if strategy not in self._logged:
            self._logged.add(strategy)
            self.log.error("specplug: strategy '%s' failed in %s (%s); its rows continue with plain decoding "
                         "(logged once per strategy; every fault is counted)",
                         fault.strategy, WHERE[stage], fault.cause)

    def take(self) -> list[Fault]:
        taken, self.pending = self.pending, []
        return taken
