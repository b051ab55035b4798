"""When a plugin or one row fails during a step, only what caused it pays.

- A proposer that raises (in ``propose``, ``on_verified`` or ``release``) or returns malformed drafts, or a
  draft policy that raises, is a plugin fault: its rows of that step continue with plain decoding, which is lossless. Each fault is
  counted by strategy and stage; the first of each strategy is logged.
- A row whose own verification or stop check raises fails alone (finish reason ``error``), with one
  logged line naming the request and the cause.
- A failure that names no row (the target's forward) fails every row of that forward; the engine then
  releases them and carries on clean.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from specplug.metadata import VerifyInput, VerifyOutput

logger = logging.getLogger("specplug.engine")
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
    """The proposer faults one engine has seen: counted, the first of each strategy logged."""

    def __init__(self):
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
            logger.error("specplug: strategy '%s' failed in %s (%s); its rows continue with plain decoding "
                         "(logged once per strategy; counted in specplug:proposer_faults_total)",
                         fault.strategy, WHERE[stage], fault.cause)

    def take(self) -> list[Fault]:
        taken, self.pending = self.pending, []
        return taken


def fail_row(row, what: str, exc: BaseException) -> None:
    """End ``row`` with finish reason ``error``, logging one line that names its request and the cause."""
    row.finish_reason, row.error = "error", f"{what} failed ({cause(exc)})"
    logger.error("specplug: request %r failed: %s", row.request.request_id, row.error)


def verify_each(verify: Callable[[VerifyInput], VerifyOutput], batch: Callable[[list[int]], VerifyInput],
                rows: Sequence) -> tuple[list[list[int]], list[int]]:
    """Emitted tokens and accepted counts per row: one verify for the batch, or, when that raises, one per
    row, so that only the rows whose own verification raises fail (with empty results)."""
    everyone = list(range(len(rows)))
    try:
        result = verify(batch(everyone))
        return result.output_token_ids.tolist(), result.num_accepted.tolist()
    except Exception:  # a plugin verifier or a row's sampling values: find the rows it comes from
        emitted, accepted = [], []
        for i, row in enumerate(rows):
            try:
                one = verify(batch([i]))
                emitted.append(one.output_token_ids[0].tolist())
                accepted.append(int(one.num_accepted[0]))
            except Exception as exc:
                fail_row(row, "verification", exc)
                emitted.append([])
                accepted.append(0)
        return emitted, accepted
