"""Drafting with a causal LM: a separate small model (``draft_model``) or the target itself with
layers skipped (``layerskip``). Both keep their own static KV cache in GQA layout.

Per row the drafter remembers ``fed``: the tokens whose K/V its cache holds. At each step the row's
tokens (prompt + accepted output) are compared with ``fed``; the cache rolls back to their common
prefix and the rest is fed in one catch-up forward, whose last logits give the first draft token.
This covers rejected drafts (rolled back) and fully accepted ones (the last draft token and the bonus
token were never fed: both are caught up). Then k - 1 one-token forwards draft the rest (``chain``:
greedy or sampled, with the draft's distribution for sampled rows).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from specplug.metadata import Draft, DraftRequest
from specplug.models.llama import CompactLlama, LayerPlan
from specplug.models.runner import StepRunner
from specplug.proposers.base import Proposer, token_list
from specplug.proposers.chain import Chain, pick
from specplug.sampling import make_generator


@dataclass
class DrafterSlot:
    """The draft model's own KV-cache slot for one row of the batch it drafts for."""

    seq_id: Hashable
    slot: int
    generator: torch.Generator  # the row's own draws, seeded by its request: no batch companion moves them
    fed: list[int] = field(default_factory=list)  # tokens whose K/V the draft cache holds


class ModelDrafter(Proposer):
    def __init__(self, name: str, model: CompactLlama, plan: LayerPlan | None, max_rows: int,
                 max_len: int, k: int, confidence_threshold: float = 0.0, enforce_eager: bool = False):
        self.name, self.model, self.plan = name, model, plan
        self.confidence_threshold = confidence_threshold
        self.max_rows = max_rows
        # catch-up feeds up to k + 1 tokens (the last accepted draft and the bonus token, or more)
        self.runner = StepRunner.create(model, max_rows, k + 1, max_len + 1, plan, enforce_eager)
        self.cache = self.runner.cache
        self.rows: list[DrafterSlot] = []  # rows[i] lives in cache slot i
        self.by_id: dict[Hashable, DrafterSlot] = {}

    @torch.inference_mode()
    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        active = [r for r in requests if r.max_draft_tokens > 0]
        if not active:
            return [Draft([]) for _ in requests]
        rows = [self._row(r) for r in active]
        chain = Chain(active, self.confidence_threshold)
        logits = dict(enumerate(self._catch_up(rows, active)))
        running = list(range(len(active)))
        while running := chain.extend(running, lambda i: pick(active[i], logits[i], rows[i].generator,
                                                              confidence=bool(self.confidence_threshold))):
            logits = dict(zip(running, self._feed([rows[i] for i in running],
                                                  [[chain.tokens[i][-1]] for i in running])))
        drafted = {r.seq_id: d for r, d in zip(active, chain.drafts(with_confidence=False))}
        return [drafted.get(r.seq_id, Draft([])) for r in requests]

    def release(self, seq_id: Hashable) -> None:
        row = self.by_id.pop(seq_id, None)
        if row is None:
            return
        self.cache.release(self.rows, row)

    # ---- internals ------------------------------------------------------------------------------
    def _row(self, request: DraftRequest) -> DrafterSlot:
        row = self.by_id.get(request.seq_id)
        if row is None:
            if len(self.rows) == self.max_rows:
                raise RuntimeError(f"proposer '{self.name}' holds {self.max_rows} rows already; "
                                   "rows must be released when they finish")
            row = DrafterSlot(request.seq_id, len(self.rows), make_generator(request.sampling.seed, self.model.device))
            self.rows.append(row)
            self.by_id[request.seq_id] = row
        return row

    def _catch_up(self, rows: list[DrafterSlot], requests: list[DraftRequest]) -> torch.Tensor:
        """Roll each row back to what it shares with its tokens, feed the rest: logits [B, V]."""
        chunks = []
        for row, request in zip(rows, requests):
            tokens = token_list(request.token_ids)
            common = min(_common_prefix(row.fed, tokens), len(tokens) - 1)  # feed at least the last
            self.cache.rollback(row.slot, common)
            row.fed = tokens[:common]
            chunks.append(tokens[common:])
        return self._feed(rows, chunks)

    def _feed(self, rows: list[DrafterSlot], chunks: list[list[int]]) -> torch.Tensor:
        for row, chunk in zip(rows, chunks):
            row.fed.extend(chunk)
        return self._forward(rows, chunks)

    def _forward(self, rows: list[DrafterSlot], chunks: list[list[int]]) -> torch.Tensor:
        """Feed ``chunks`` to ``rows`` in one step over every live slot: logits [len(rows), V].

        Slots not in ``rows`` get one dummy token past their valid length (overwritten later).
        """
        inputs: list[list[int]] = [[0] for _ in self.rows]
        last = [0] * len(self.rows)
        for row, chunk in zip(rows, chunks):
            inputs[row.slot] = chunk
            last[row.slot] = len(chunk) - 1
        logits = self.runner.run(inputs, self.cache.lengths[: len(self.rows)], last)
        for row, chunk in zip(rows, chunks):
            self.cache.lengths[row.slot] += len(chunk)
        return logits[[row.slot for row in rows], 0]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case, compared at C speed
        return n
    return next(i for i in range(n) if a[i] != b[i])
