"""vLLM rows to specplug sequences.

vLLM's ``custom_class`` hook passes no request ids: each step it hands over its batch as rows of
tokens, and a row's index changes when requests finish or arrive. A specplug proposer keys its state
by a stable ``seq_id``, so the adapter recognises each row by its tokens: a row continues a sequence
seen at the last step when that sequence's tokens are a prefix of the row's. The row at the same index
is tried first, then every unclaimed sequence. What a proposer keeps for a sequence depends only on
its tokens, so even two rows with identical tokens swapping places leave every proposer correct.

``RowTranslator`` is the whole translation of one step (rows to sequences, releases, what was
accepted, drafts); it needs no vLLM, so the conformance kit (``specplug.testing``) runs a proposer
through it exactly as a vLLM worker would.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from specplug.metadata import DraftRequest
from specplug.proposers.base import check_drafts
from specplug_vllm.stats import StrategyStats
from specplug_vllm.strategy import Strategy, verified


@dataclass
class TrackedRow:
    seq_id: int
    k: int  # this sequence's draft budget (changes only with adaptive_k)
    tokens: np.ndarray  # [N] int: prompt + accepted output when last seen
    num_prompt_tokens: int
    num_draft: int = 0  # tokens drafted for it at the last step

    def continues_into(self, tokens: np.ndarray) -> bool:
        n = len(self.tokens)
        return n <= len(tokens) and np.array_equal(tokens[:n], self.tokens)


class RowTracker:
    def __init__(self) -> None:
        self.by_row: dict[int, TrackedRow] = {}
        self._ids = itertools.count()

    def update(self, rows: dict[int, np.ndarray], num_new: dict[int, int],
               k: int) -> tuple[dict[int, TrackedRow], list[TrackedRow]]:
        """Match this step's ``rows`` (index -> tokens) to the sequences of the last step.

        ``num_new[i]``: tokens row i gained this step (for a new sequence, its prompt length).
        Returns the sequence of every row, and the sequences no row continues (to be released).
        """
        unclaimed = {t.seq_id: t for t in self.by_row.values()}
        current: dict[int, TrackedRow] = {}
        for index, tokens in rows.items():
            tracked = self._continued(self.by_row.get(index), unclaimed, tokens)
            if tracked is None:
                tracked = TrackedRow(next(self._ids), k, tokens, len(tokens) - num_new[index])
            else:
                del unclaimed[tracked.seq_id]
            tracked.tokens = tokens
            current[index] = tracked
        self.by_row = current
        return current, list(unclaimed.values())

    @staticmethod
    def _continued(same_index: TrackedRow | None, unclaimed: dict[int, TrackedRow],
                   tokens: np.ndarray) -> TrackedRow | None:
        if same_index is not None and same_index.seq_id in unclaimed and same_index.continues_into(tokens):
            return same_index
        return next((t for t in unclaimed.values() if t.continues_into(tokens)), None)

    def tracked(self) -> list[TrackedRow]:
        return list(self.by_row.values())


class RowTranslator:
    """vLLM's batch in, a specplug proposer's drafts out: the custom_class hook without vLLM's config,
    the config swap or the log, so that the conformance kit can drive it where vLLM is not installed.

    A step is ``observe`` (match rows to sequences, release the gone ones, tell the proposer what was
    accepted) then ``draft``; the hook swaps strategies between the two.
    """

    def __init__(self, max_model_len: int, vocab_size: int):
        self.tracker = RowTracker()
        self.max_model_len, self.vocab_size = max_model_len, vocab_size

    def observe(self, strategy: Strategy, sampled_token_ids: Sequence[Sequence[int]], num_tokens_no_spec: np.ndarray,
                token_ids_cpu: np.ndarray, stats: StrategyStats | None = None) -> dict[int, TrackedRow]:
        """Row index -> sequence for every row that sampled this step (rows in prefill have none)."""
        live = {i: token_ids_cpu[i, : num_tokens_no_spec[i]].copy()
                for i, sampled in enumerate(sampled_token_ids) if len(sampled)}
        rows, gone = self.tracker.update(live, {i: len(sampled_token_ids[i]) for i in live}, strategy.k)
        for tracked in gone:
            strategy.proposer.release(tracked.seq_id)
        self._report_verified(strategy, rows, sampled_token_ids, stats)
        return rows

    def draft(self, strategy: Strategy, rows: dict[int, TrackedRow], num_rows: int) -> list[list[int]]:
        """One draft per row of the batch: ``[]`` for rows that did not sample."""
        drafts: list[list[int]] = [[] for _ in range(num_rows)]
        tracked = list(rows.values())
        requests = [DraftRequest(t.seq_id, t.tokens, t.num_prompt_tokens,
                                 max(0, min(t.k, self.max_model_len - len(t.tokens)))) for t in tracked]
        if not requests:
            return drafts
        proposed = strategy.proposer.propose(requests)
        check_drafts(strategy.proposer, requests, proposed, self.vocab_size)
        for index, row, draft in zip(rows, tracked, proposed):
            row.num_draft = len(draft.token_ids)
            drafts[index] = [int(t) for t in draft.token_ids]
        return drafts

    def hand_over(self, old: Strategy, new: Strategy) -> int:
        """Sequences in flight leave ``old``'s proposer and continue with ``new``'s budget; how many."""
        in_flight = self.tracker.tracked()
        for tracked in in_flight:
            old.proposer.release(tracked.seq_id)
            tracked.k = new.k
        return len(in_flight)

    @staticmethod
    def _report_verified(strategy: Strategy, rows: dict[int, TrackedRow], sampled_token_ids: Sequence[Sequence[int]],
                         stats: StrategyStats | None) -> None:
        """What vLLM kept of last step's drafts: a row sampled its accepted drafts + 1."""
        outcomes = []
        for index, tracked in rows.items():
            if not tracked.num_draft:
                continue
            emitted = tuple(int(t) for t in sampled_token_ids[index])
            accepted = min(len(emitted) - 1, tracked.num_draft)
            if stats is not None:
                stats.record(tracked.num_draft, accepted)
            outcomes.append(verified(tracked, tracked.seq_id, accepted, emitted, strategy))
        if outcomes:
            strategy.proposer.on_verified(outcomes)
