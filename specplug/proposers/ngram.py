"""Built-in plugin: ``ngram``, prompt-lookup decoding.

The longest recent n-gram (max_n down to min_n tokens) that ends the sequence is looked up among the
earlier tokens (prompt and output); the tokens that followed its latest earlier occurrence are the draft.
Each row keeps a hash index from n-gram to the position after its latest occurrence, extended only
with the tokens accepted since the previous step: no scan over the prompt per step.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from specplug.hookspecs import hookimpl
from specplug.metadata import Draft, DraftRequest, ProposerContext
from specplug.options import option
from specplug.proposers.base import Proposer, extends, token_list
from specplug.registry import ProposerCapabilities


class NgramIndex:
    """n-gram -> position of the token that followed its latest occurrence, for one row."""

    def __init__(self, min_n: int, max_n: int):
        self.sizes = range(max_n, min_n - 1, -1)  # longest first
        self.tokens: list[int] = []
        self.tables: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}

    def extend(self, token_ids: Sequence[int]) -> None:
        """Index the tokens of ``token_ids`` beyond those already seen."""
        start = len(self.tokens)
        new = token_ids[start:]
        self.tokens.extend(token_list(new))
        tokens = self.tokens
        # The n-gram tokens[end - n:end] is indexed once the token after it (tokens[end]) exists,
        # so a lookup of the final n-gram only finds earlier occurrences.
        for end in range(max(start, 1), len(tokens)):
            for n, table in self.tables.items():
                if end >= n:
                    table[tuple(tokens[end - n : end])] = end

    def lookup(self, max_tokens: int) -> tuple[list[int], int]:
        """Continuation of the longest matching suffix n-gram, at most ``max_tokens`` long, and that n
        (0: no match)."""
        tokens = self.tokens
        for n in self.sizes:
            if len(tokens) <= n:
                continue
            follow = self.tables[n].get(tuple(tokens[-n:]))
            if follow is not None:
                return tokens[follow : follow + max_tokens], n
        return [], 0


def match_confidence(n: int, length: int) -> list[float]:
    """The stated confidence of each draft token: m / (m + 1), m the tokens of context it was matched on
    (the n-gram, then the draft tokens before it). A one-token match in open-ended text is mostly chance;
    ``auto`` learns what each length is worth here (``Calibration``) and never trusts these as they are."""
    return [(n + j) / (n + j + 1) for j in range(length)]


class NgramProposer(Proposer):
    name = "ngram"

    def __init__(self, min_n: int = 1, max_n: int = 4):
        self.min_n, self.max_n = min_n, max_n
        self.indexes: dict[Hashable, NgramIndex] = {}

    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        return [self._propose_one(r) for r in requests]

    def _propose_one(self, request: DraftRequest) -> Draft:
        index = self.indexes.get(request.seq_id)
        if index is None or not extends(index.tokens, request.token_ids):
            index = self.indexes[request.seq_id] = NgramIndex(self.min_n, self.max_n)
        index.extend(request.token_ids)
        if request.max_draft_tokens <= 0:
            return Draft([])
        tokens, n = index.lookup(request.max_draft_tokens)
        return Draft(tokens, confidence=match_confidence(n, len(tokens)))  # probs None: deterministic

    def release(self, seq_id: Hashable) -> None:
        self.indexes.pop(seq_id, None)


@dataclass(frozen=True)
class NgramOptions:
    min_n: int = option(1, "shortest n-gram looked up", ge=1, le=64)
    max_n: int = option(4, "longest n-gram looked up (tried first)", ge=1, le=64)

    def check(self) -> str | None:
        if self.min_n > self.max_n:
            return f"min_n ({self.min_n}) must not exceed max_n ({self.max_n}); e.g. --set proposer.max_n=4"
        return None


def make_ngram(context: ProposerContext, options: NgramOptions) -> NgramProposer:
    return NgramProposer(min_n=options.min_n, max_n=options.max_n)


@hookimpl
def register_proposers(register):
    register.proposer("ngram", make_ngram, options=NgramOptions, capabilities=ProposerCapabilities(stateful=True))
