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


def group_by_strategy(rows: list) -> dict[Strategy, list[int]]:
    """Row indices by strategy, in order of first appearance (a strategy's rows are proposed for together).
    Rows whose strategy failed (``row.plain``) belong to none: nothing drafts for them any more."""
    groups: dict[Strategy, list[int]] = {}
    for i, row in enumerate(rows):
        if not row.plain:
            groups.setdefault(row.strategy, []).append(i)
    return groups


def plan_budgets(groups: dict[Strategy, list[int]], rows: list, max_k: int, faults) -> None:
    """Let each policy-driven strategy (``auto``) set its rows' budgets (``row.k``) for this step."""
    fixed = [rows[i].k for s, idx in groups.items() if s.policy is None for i in idx]
    floor_width = 1 + min(max(fixed, default=0), max_k)
    for strategy, idx in groups.items():
        if strategy.policy is not None:
            mine = [rows[i] for i in idx]
            try:
                budgets = strategy.policy.plan(mine, len(rows), floor_width)
            except Exception as exc:  # its rows decode plainly, as after a proposer fault
                faults.record(strategy, "policy", exc, mine)
                continue
            for row, k in zip(mine, budgets):
                row.k = k


def trim_drafts(groups: dict[Strategy, list[int]], rows: list, drafts: list, faults) -> list:
    """Let each policy-driven strategy cut its rows' drafts, now that they are known."""
    fixed = [len(drafts[i].token_ids) for s, idx in groups.items() if s.policy is None for i in idx]
    for strategy, idx in groups.items():
        if strategy.policy is not None:
            try:
                keep = strategy.policy.trim([rows[i] for i in idx], [drafts[i] for i in idx], len(rows),
                                            1 + max(fixed, default=0))
            except Exception as exc:
                faults.record(strategy, "policy", exc, [rows[i] for i in idx])
                keep = [0] * len(idx)
            for i, n in zip(idx, keep):
                drafts[i] = drafts[i].cut(n)
    return drafts


def observe_step(groups: dict[Strategy, list[int]], rows: list, drafts: list, outputs: list, width: int,
                 target_seconds: float, propose_seconds: float, faults) -> None:
    """Tell each policy what its rows' drafts cost and how much of them was accepted."""
    for strategy, idx in groups.items():
        if strategy.policy is not None:
            try:
                strategy.policy.observe([rows[i] for i in idx], [drafts[i] for i in idx],
                                        [outputs[i].num_accepted for i in idx], len(rows), width,
                                        target_seconds, propose_seconds)
            except Exception as exc:
                faults.record(strategy, "policy", exc, [rows[i] for i in idx])
