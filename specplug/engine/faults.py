"""When one row fails during a step of the embedded engine, only that row pays.

- A proposer or draft policy that fails is a plugin fault (``specplug.hosting.faults``): its rows go on
  with plain decoding.
- A row whose own verification or stop check raises fails alone (finish reason ``error``), with one
  logged line naming the request and the cause.
- A failure that names no row (the target's forward) fails every row of that forward; the engine then
  releases them and carries on clean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from specplug.hosting.faults import cause
from specplug.metadata import VerifyInput, VerifyOutput

logger = logging.getLogger("specplug.engine")


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
