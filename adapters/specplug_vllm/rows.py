"""vLLM rows to specplug sequences.

vLLM's ``custom_class`` hook passes no request ids: each step it hands over its batch as rows of
tokens, and a row's index changes when requests finish or arrive. A specplug proposer keys its state
by a stable ``seq_id``, so the adapter recognises each row by its tokens: a row continues a sequence
seen at the last step when that sequence's tokens are a prefix of the row's. The row at the same index
is tried first, then every unclaimed sequence. What a proposer keeps for a sequence depends only on
its tokens, so even two rows with identical tokens swapping places leave every proposer correct.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


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
