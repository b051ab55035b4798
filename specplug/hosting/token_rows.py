"""Hosts that see each step's batch as rows of tokens (vLLM's ``custom_class`` hook): batch rows to
``Row``s, what was kept of their last drafts, what the step cost, and their next drafts.

A batch row's index changes when requests finish or arrive. Where the host shows each batch row's request
id (vLLM's model runner does, through ``specplug_vllm.runner``), a row is its request. Otherwise a batch
row continues a sequence seen at the last step when that sequence's tokens are a prefix of the row's: the
row at the same index is tried first, then every unclaimed sequence. What a proposer keeps for a sequence
depends only on its tokens, so even two rows with identical tokens swapping places leave it correct.

``TokenRows`` needs no engine, so the conformance kit (``specplug.testing``) runs a proposer through it
exactly as a vLLM worker does.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from specplug.hosting.clock import StepClock
from specplug.hosting.drafting import Drafting
from specplug.hosting.faults import PluginFaults
from specplug.hosting.rows import Row
from specplug.hosting.stats import DraftStats
from specplug.hosting.strategy import StrategyTable, hand_over
from specplug.metadata import Draft, DraftRequest, SamplingParams

logger = logging.getLogger("specplug.hosting")


@dataclass
class BatchView:
    """One drafter call's batch, by batch row."""

    sampled: Sequence[Sequence[int]]  # tokens each row sampled this step ([] for a row still in prefill)
    num_tokens: np.ndarray  # [rows] tokens each row holds (prompt + accepted output)
    token_ids: np.ndarray  # [rows, max_len] its tokens (stale ids beyond each count)
    request_ids: Sequence[Hashable | None] | None = None  # each row's request, where the host shows them
    strategies: Sequence[str | None] | None = None  # the strategy each row's request named (None: default)
    limits: Sequence[int] | None = None  # the most drafts each row may take now (besides k and the context)
    sampling: Sequence[SamplingParams] | None = None  # each row's sampling (default: greedy drafts)
    # whether the target step timed since the last call prefilled anything; None: the host calls after its
    # step (vLLM), so a row that is new or still in prefill now says so
    step_had_prefill: bool | None = None
    # the host calls before its step (TensorRT-LLM): the step timed since the last call verified every row
    # drafted for then; after it (vLLM): the rows still here (those that finished had left it)
    calls_before_step: bool = False


class RowMatcher:
    """This step's batch rows to the ``Row``s of the last step (new ones made by ``new_row``)."""

    def __init__(self) -> None:
        self.by_index: dict[int, Row] = {}
        self.tokens: dict[Hashable, np.ndarray] = {}  # seq_id -> its tokens when last seen
        self._ids = itertools.count()

    def update(self, live: dict[int, np.ndarray], request_ids, new_row) -> tuple[dict[int, Row], list[Row], bool]:
        """(batch row -> Row for every live row, the Rows no live row continues, whether any Row is new)."""
        unclaimed = {row.seq_id: row for row in self.by_index.values()}
        current: dict[int, Row] = {}
        fresh = False
        for index, tokens in live.items():
            request_id = request_ids[index] if request_ids is not None else None
            row = unclaimed.get(request_id) if request_id is not None else self._continued(index, unclaimed, tokens)
            if row is None:
                row, fresh = new_row(index, request_id if request_id is not None else next(self._ids), tokens), True
            else:
                del unclaimed[row.seq_id]
            self.tokens[row.seq_id] = tokens
            current[index] = row
        self.by_index = current
        for row in unclaimed.values():
            del self.tokens[row.seq_id]
        return current, list(unclaimed.values()), fresh

    def _continued(self, index: int, unclaimed: dict[Hashable, Row], tokens: np.ndarray) -> Row | None:
        same = self.by_index.get(index)
        if same is not None and same.seq_id in unclaimed and self._continues(same, tokens):
            return same
        return next((row for row in unclaimed.values() if self._continues(row, tokens)), None)

    def _continues(self, row: Row, tokens: np.ndarray) -> bool:
        seen = self.tokens[row.seq_id]
        return len(seen) <= len(tokens) and np.array_equal(tokens[: len(seen)], seen)

    def rows(self) -> list[Row]:
        return list(self.by_index.values())


class TokenRows:
    """One host's translation of each drafter call: ``step`` in, a draft per batch row out."""

    def __init__(self, max_model_len: int, vocab_size: int, max_k: int, stats: DraftStats | None = None,
                 faults: PluginFaults | None = None):
        self.max_model_len = max_model_len
        self.drafting = Drafting(vocab_size, max_k, faults)
        self.matcher = RowMatcher()
        self.clock = StepClock()
        self.stats = stats
        self.last: dict[Hashable, Draft] = {}  # last step's drafts by seq_id (every row of that step)
        self.propose_seconds = 0.0  # the last call's own time
        self._unknown: set[str] = set()

    def step(self, table: StrategyTable, batch: BatchView) -> list[Draft]:
        """One drafter call: ``observe`` then ``draft``."""
        return self.draft(table, batch, self.observe(table, batch))

    def observe(self, table: StrategyTable, batch: BatchView) -> dict[int, Row]:
        """The first half of a call: match rows (new ones take ``table``'s strategies), release the gone,
        tell proposers what was kept of their drafts, and time the step just run. A host swaps strategies
        between this and ``draft``."""
        target_seconds = self.clock.begin()
        live = {i: batch.token_ids[i, : batch.num_tokens[i]].copy() for i, s in enumerate(batch.sampled) if len(s)}

        def new_row(index: int, seq_id: Hashable, tokens: np.ndarray) -> Row:
            name = batch.strategies[index] if batch.strategies is not None else None
            strategy = self._pick(table, name)
            return Row(seq_id=seq_id, strategy=strategy, named=name == strategy.name,
                       num_prompt_tokens=len(tokens) - len(batch.sampled[index]))

        rows, gone, fresh = self.matcher.update(live, batch.request_ids, new_row)
        for row in gone:
            self.drafting.release(row)
        self._verified(rows, batch.sampled)
        prefill = batch.step_had_prefill
        if prefill is None:
            prefill = fresh or any(not len(s) and n for s, n in zip(batch.sampled, batch.num_tokens))
        if target_seconds is not None and not prefill:
            self._observe(list(rows.values()), [batch.sampled[i] for i in rows], target_seconds,
                          batch.calls_before_step)
        return rows

    def draft(self, table: StrategyTable, batch: BatchView, rows: dict[int, Row]) -> list[Draft]:
        """The second half: this step's draft for every batch row (empty for a row that sampled nothing)."""
        limits = {row.seq_id: (batch.limits[i] if batch.limits is not None else None,
                               batch.sampling[i] if batch.sampling is not None else SamplingParams())
                  for i, row in rows.items()}
        drafts = self.drafting.draft(list(rows.values()), lambda row: self._request(row, *limits[row.seq_id]))
        self.last = {row.seq_id: draft for row, draft in zip(rows.values(), drafts)}
        self._count(table, bool(rows))
        out = [Draft([]) for _ in batch.sampled]
        for index, draft in zip(rows, drafts):
            out[index] = draft
        self.propose_seconds = self.clock.end()
        return out

    def _pick(self, table: StrategyTable, name: str | None):
        if name is None or name in table.strategies:
            return table.pick(name)
        if name not in self._unknown:
            self._unknown.add(name)
            logger.warning("specplug: a request named strategy '%s', which %s does not configure (known: %s); such "
                           "requests use the default, '%s'", name, table.config.source, ", ".join(table.strategies),
                           table.default_name)
        return table.default

    def _request(self, row: Row, limit: int | None, sampling: SamplingParams) -> DraftRequest:
        tokens = self.matcher.tokens[row.seq_id]
        budget = min(row.k, self.max_model_len - len(tokens), limit if limit is not None else row.k)
        return DraftRequest(row.seq_id, tokens, row.num_prompt_tokens, max(0, budget), sampling)

    def _verified(self, rows: dict[int, Row], sampled: Sequence[Sequence[int]]) -> None:
        """What the engine kept of last step's drafts: a row sampled its accepted drafts + 1."""
        told, accepted, emitted = [], [], []
        for index, row in rows.items():
            if row.num_draft:
                tokens = tuple(int(t) for t in sampled[index])
                n = min(len(tokens) - 1, row.num_draft)
                if self.stats is not None:
                    self.stats.record(row.strategy.name, row.num_draft, n)
                told.append(row), accepted.append(n), emitted.append(tokens)
        self.drafting.verified(told, accepted, emitted)

    def _observe(self, rows: list[Row], sampled: list[Sequence[int]], target_seconds: float,
                 calls_before_step: bool) -> None:
        """Last step's cost and acceptance (no row joined or was in prefill in it)."""
        drafts = [self.last.get(row.seq_id, Draft([])) for row in rows]
        accepted = [min(len(s) - 1, len(d.token_ids)) for s, d in zip(sampled, drafts)]
        verified = list(self.last.values()) if calls_before_step else drafts
        width = 1 + max((len(d.token_ids) for d in verified), default=0)
        tokens = sum(1 + len(d.token_ids) for d in verified)
        self.drafting.observe(rows, drafts, accepted, len(verified), width, target_seconds, self.propose_seconds,
                              tokens)

    def _count(self, table: StrategyTable, any_rows: bool) -> None:
        if self.stats is None:
            return
        self.stats.steps += any_rows
        self.stats.faulted(self.drafting.faults.take())
        for strategy in table.strategies.values():
            chosen = getattr(strategy.policy, "chosen", None)
            if chosen:
                self.stats.chose(strategy.name, chosen, strategy.policy.step_ms)

    def seen_length(self, seq_id: Hashable) -> int | None:
        """How many tokens ``seq_id`` held at the last step (None: not seen then)."""
        tokens = self.matcher.tokens.get(seq_id)
        return None if tokens is None else len(tokens)

    def hand_over(self, table: StrategyTable) -> int:
        """A swap: rows in flight move to ``table`` (released from their old proposers); how many."""
        return hand_over(self.matcher.rows(), table, self.drafting.release)
