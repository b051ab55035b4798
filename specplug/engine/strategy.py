"""What a row speculates with: a proposer, its draft budget, and how the budget moves.

The engine holds a default ``Strategy``; a request may name another. Rows keep the strategy they
started with until they finish, so swapping the default never disturbs a row in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from specplug.proposers.base import Proposer


class DraftPolicy(Protocol):
    """Chooses each row's draft budget every step (``auto``) and learns from what happened."""

    def plan(self, rows: list, batch_size: int, floor_width: int) -> list[int]:
        """Draft budgets (0..k) for ``rows`` of this strategy; ``floor_width`` is the verify width the
        other rows of the batch already need (1 when none)."""

    def trim(self, rows: list, drafts: list, batch_size: int, floor_width: int) -> list[int]:
        """How many tokens of each row's draft to verify, now that the drafts are known."""

    def observe(self, rows: list, drafts: list, accepted: list[int], batch_size: int, width: int,
                target_seconds: float, propose_seconds: float) -> None:
        """One verify step: per row the draft verified and how many of it were accepted, and what the
        step cost."""


@dataclass(eq=False)
class Strategy:
    name: str  # as configured (the proposer's name unless given another)
    proposer: Proposer
    k: int  # the most drafts a row may propose per step
    adaptive_k: bool = False  # per-row budget from the row's own acceptance (HF's heuristic)
    policy: DraftPolicy | None = None  # when set (auto), it chooses the budgets instead

    def __repr__(self) -> str:
        return f"Strategy({self.name!r}, k={self.k})"
