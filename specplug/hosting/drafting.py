"""One host's drafting, each step, for every engine: budgets, proposals, cuts, what was accepted, costs.

A step of any host is: ``draft`` (the draft policies set budgets, each strategy's proposer drafts for its
rows together, the policies cut what is not worth its verify time), then the engine verifies, then
``verified`` (each proposer is told what was kept; adaptive budgets move) and ``observe`` (the policies
learn what the step cost). A proposer or policy that raises is a plugin fault (``faults``): its rows of
that step go on without drafts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from specplug.hosting.faults import PluginFaults
from specplug.hosting.rows import Row
from specplug.hosting.strategy import Strategy
from specplug.metadata import Draft, DraftRequest, VerifyOutcome
from specplug.proposers.base import check_drafts, feature_layers_of


def group_by_strategy(rows: Sequence[Row]) -> dict[Strategy, list[int]]:
    """Row indices by strategy, in order of first appearance (a strategy's rows are proposed for together).
    Rows whose strategy failed (``row.plain``) belong to none: nothing drafts for them any more."""
    groups: dict[Strategy, list[int]] = {}
    for i, row in enumerate(rows):
        if not row.plain:
            groups.setdefault(row.strategy, []).append(i)
    return groups


class Drafting:
    def __init__(self, vocab_size: int, max_k: int, faults: PluginFaults | None = None):
        self.vocab_size, self.max_k = vocab_size, max_k
        self.faults = faults or PluginFaults()

    def draft(self, rows: Sequence[Row], request: Callable[[Row], DraftRequest], batch_size: int | None = None
              ) -> list[Draft]:
        """One draft per row (empty where nothing is drafted); ``request`` shows a row to its proposer once
        its budget for this step is set. ``batch_size``: rows in the step (default: ``rows``)."""
        batch_size = len(rows) if batch_size is None else batch_size
        groups = group_by_strategy(rows)
        self._plan(groups, rows, batch_size)
        drafts: list[Draft] = [Draft([])] * len(rows)
        for strategy, idx in groups.items():
            requests = [request(rows[i]) for i in idx]
            if not any(r.max_draft_tokens for r in requests):
                continue  # nothing to draft this step: a stateful proposer catches up next time
            try:
                got = strategy.proposer.propose(requests)
                check_drafts(strategy.proposer, requests, got, self.vocab_size)
            except Exception as exc:  # a plugin fault: these rows go on without drafts
                self.faults.record(strategy, "propose", exc, [rows[i] for i in idx])
                continue
            for i, draft in zip(idx, got):
                drafts[i] = draft
        drafts = self._trim(groups, rows, drafts, batch_size)
        for row, draft in zip(rows, drafts):
            row.num_draft = len(draft.token_ids)
        return drafts

    def _plan(self, groups: dict[Strategy, list[int]], rows: Sequence[Row], batch_size: int) -> None:
        """Each policy-driven strategy (``auto``) sets its rows' budgets (``row.k``) for this step."""
        fixed = [rows[i].k for s, idx in groups.items() if s.policy is None for i in idx]
        floor_width = 1 + min(max(fixed, default=0), self.max_k)
        for strategy, idx in groups.items():
            if strategy.policy is not None:
                mine = [rows[i] for i in idx]
                try:
                    budgets = strategy.policy.plan(mine, batch_size, floor_width)
                except Exception as exc:  # its rows decode plainly, as after a proposer fault
                    self.faults.record(strategy, "policy", exc, mine)
                    continue
                for row, k in zip(mine, budgets):
                    row.k = k

    def _trim(self, groups: dict[Strategy, list[int]], rows: Sequence[Row], drafts: list[Draft],
              batch_size: int) -> list[Draft]:
        """Each policy-driven strategy cuts its rows' drafts, now that they are known."""
        fixed = [len(drafts[i].token_ids) for s, idx in groups.items() if s.policy is None for i in idx]
        for strategy, idx in groups.items():
            if strategy.policy is not None:
                try:
                    keep = strategy.policy.trim([rows[i] for i in idx], [drafts[i] for i in idx], batch_size,
                                                1 + max(fixed, default=0))
                except Exception as exc:
                    self.faults.record(strategy, "policy", exc, [rows[i] for i in idx])
                    keep = [0] * len(idx)
                for i, n in zip(idx, keep):
                    drafts[i] = drafts[i].cut(n)
        return drafts

    def verified(self, rows: Sequence[Row], accepted: Sequence[int], emitted: Sequence[tuple[int, ...]]) -> None:
        """What the engine kept of each row's last draft (``accepted`` of it, then ``emitted`` tokens in all):
        budgets move with adaptive_k, and each proposer is told about its rows."""
        outcomes: dict[Strategy, list[VerifyOutcome]] = {}
        for row, n, tokens in zip(rows, accepted, emitted):
            outcome = row.verified(n, tokens)
            if not row.plain:
                outcomes.setdefault(row.strategy, []).append(outcome)
        for strategy, told in outcomes.items():
            try:
                strategy.proposer.on_verified(told)
            except Exception as exc:
                self.faults.record(strategy, "on_verified", exc, [row for row in rows if row.strategy is strategy])

    def observe(self, rows: Sequence[Row], drafts: Sequence[Draft], accepted: Sequence[int], batch_size: int,
                width: int, target_seconds: float, propose_seconds: float, tokens: int | None = None) -> None:
        """Tell each policy what its rows' drafts cost (one verify step of ``batch_size`` rows, ``width``
        tokens wide, ``tokens`` verified in all where the engine packs them) and how much was accepted."""
        for strategy, idx in group_by_strategy(rows).items():
            if strategy.policy is not None:
                try:
                    strategy.policy.observe([rows[i] for i in idx], [drafts[i] for i in idx],
                                            [accepted[i] for i in idx], batch_size, width, target_seconds,
                                            propose_seconds, tokens)
                except Exception as exc:
                    self.faults.record(strategy, "policy", exc, [rows[i] for i in idx])

    def feature_layers(self, rows: Sequence[Row]) -> tuple[int, ...]:
        """The target layers whose features some proposer of ``rows`` drafts from (sorted; () for none)."""
        groups = group_by_strategy(rows)
        return tuple(sorted({layer for strategy in groups for layer in feature_layers_of(strategy.proposer)}))

    def features(self, rows: Sequence[Row], first_positions: Sequence[int], counts: Sequence[int],
                 features: dict[int, torch.Tensor]) -> None:
        """Hand each row's proposer the target's ``features`` ({layer: [B, T, hidden]}, row i in batch row i)
        at its ``counts[i]`` positions from ``first_positions[i]`` on, the layers it asked for concatenated."""
        for strategy, idx in group_by_strategy(rows).items():
            layers = feature_layers_of(strategy.proposer)
            if not layers:
                continue
            try:
                for i in idx:
                    chunk = torch.cat([features[layer][i, : counts[i]] for layer in layers], -1)
                    strategy.proposer.on_target_features(rows[i].seq_id, first_positions[i], chunk)
            except Exception as exc:
                self.faults.record(strategy, "on_target_features", exc, [rows[i] for i in idx])

    def release(self, row: Row) -> None:
        """``row`` left: its proposer forgets it (a proposer that raises here only costs a fault count)."""
        try:
            row.strategy.proposer.release(row.seq_id)
        except Exception as exc:
            self.faults.record(row.strategy, "release", exc, [])
