"""Built-in plugin: ``suffix``, suffix decoding (Oliaro et al., arXiv 2411.04975).

Two indexes answer each row:
- per request: a suffix automaton of the row's own prompt and output (``suffix_automaton``), which
  subsumes prompt lookup; freed on ``release``;
- global: a suffix tree over the outputs (with ``use_prompts``, prompts and outputs) of the requests
  this proposer object served before (``suffix_tree``), shared by all the rows of its engine. A row
  enters it when released, whole; it holds at most ``max_cached_tokens`` tokens and
  ``max_cached_requests`` requests, and the oldest requests leave first.

In each index the draft starts from the longest suffix of the row (at most ``max_depth`` tokens) found
there, then follows the most frequent next token while the probability of the whole drafted path (the
product, over its tokens, of count(context + token) / count(context with a next token)) stays at
least ``min_token_prob``, for at most ``max_spec_factor * match_len + max_spec_offset`` tokens and the
row's budget. Score of a draft: the sum of those path probabilities, i.e. the number of its tokens
expected to be accepted if the counts were the model's probabilities. The higher score wins; the
per-request draft wins ties. Drafts are deterministic (``probs`` None), verified one-hot: lossless at
any temperature. Each draft token's ``confidence`` is count / (total + 1): the share of the earlier
occurrences that went on this way, with one pseudo-occurrence that went elsewhere (one sighting is
weak evidence); ``adaptive_k: auto`` learns what it is worth in accepted tokens. A propose costs
O(max_depth log max_depth + draft length) per row, whatever the cache holds (docs/benchmarks.md
measures it).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from specplug.hookspecs import hookimpl
from specplug.metadata import Draft, DraftRequest, ProposerContext, VerifyOutcome
from specplug.options import option
from specplug.proposers.base import Proposer, extends, token_list
from specplug.proposers.suffix_automaton import SuffixAutomaton
from specplug.proposers.suffix_tree import GlobalCache
from specplug.registry import ProposerCapabilities


@dataclass(frozen=True)
class SuffixOptions:
    max_depth: int = option(32, "longest suffix of a row matched (tokens)", ge=1, le=256)
    max_cached_tokens: int = option(500_000, "global cache bound in tokens (0: no global cache)", ge=0, le=10**9)
    max_cached_requests: int | None = option(None, "global cache bound in requests (null: none)", ge=1)
    min_token_prob: float = option(0.1, "stop drafting when the drafted path's probability falls below", ge=0.0,
                                   le=1.0)
    max_spec_factor: float = option(1.0, "draft at most max_spec_factor * match length + max_spec_offset",
                                    ge=0.0, le=64.0)
    max_spec_offset: float = option(0.0, "see max_spec_factor", ge=-64.0, le=64.0)
    use_prompts: bool = option(False, "the global cache also keeps prompts, not only outputs")

    def draft_limit(self, match_len: int, budget: int) -> int:
        return max(0, min(budget, math.floor(self.max_spec_factor * match_len + self.max_spec_offset + 1e-9)))


def path_score(counts: Sequence[tuple[int, int]]) -> float:
    """The sum over a draft's positions of its path probability (the product of count / total up to
    there): the tokens expected to be accepted if the counts were the model's probabilities."""
    prob, score = 1.0, 0.0
    for count, total in counts:
        prob *= count / total
        score += prob
    return score


class RowState:
    """One row: a copy of its tokens, their automaton, and tokens told by ``on_verified`` since."""

    __slots__ = ("tokens", "num_prompt_tokens", "automaton", "tail")

    def __init__(self, num_prompt_tokens: int, bound: int):
        self.tokens = array("i")
        self.num_prompt_tokens = num_prompt_tokens
        self.automaton = SuffixAutomaton(bound)
        self.tail: list[int] = []

    def catch_up(self, token_ids: Sequence[int]) -> None:
        new = token_ids[len(self.tokens):]
        new = token_list(new)
        for token in new:
            self.automaton.extend(token)
        self.tokens.extend(new)
        self.tail = []

    def finished_tokens(self, use_prompts: bool) -> array:
        tokens = self.tokens + array("i", self.tail)
        return tokens if use_prompts else tokens[self.num_prompt_tokens:]


class SuffixProposer(Proposer):
    name = "suffix"

    def __init__(self, options: SuffixOptions, num_speculative_tokens: int):
        self.options = options
        self.bound = options.max_depth + num_speculative_tokens  # longest match + longest draft
        self.rows: dict[Hashable, RowState] = {}
        self.cache = GlobalCache(self.bound, options.max_cached_tokens, options.max_cached_requests)
        self.drafts_from = {"request": 0, "global": 0}  # which index each non-empty draft came from

    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        return [self._draft(r) for r in requests]

    def _row(self, request: DraftRequest) -> RowState:
        row = self.rows.get(request.seq_id)
        if row is None or not extends(row.tokens, request.token_ids):
            row = self.rows[request.seq_id] = RowState(request.num_prompt_tokens, self.bound)
        row.catch_up(request.token_ids)
        return row

    def _draft(self, request: DraftRequest) -> Draft:
        row = self._row(request)
        budget = request.max_draft_tokens
        if budget <= 0:
            return Draft([])
        s = self.options
        state, match_len = row.automaton.longest_match(s.max_depth)
        local, local_counts = [], []
        if match_len:
            local, local_counts = row.automaton.continuation(state, s.draft_limit(match_len, budget), s.min_token_prob)
        shared, shared_counts = self.cache.draft(row.tokens[-s.max_depth:], lambda n: s.draft_limit(n, budget),
                                                 s.min_token_prob)
        if path_score(shared_counts) > path_score(local_counts):
            local, local_counts = shared, shared_counts
            self.drafts_from["global"] += 1
        elif local:
            self.drafts_from["request"] += 1
        return Draft(local, confidence=[c / (total + 1) for c, total in local_counts])  # probs None: deterministic

    def on_verified(self, outcomes: Sequence[VerifyOutcome]) -> None:
        for outcome in outcomes:  # kept for release: a row's last tokens reach no later propose
            row = self.rows.get(outcome.seq_id)
            if row is not None:
                row.tail.extend(outcome.emitted)

    def release(self, seq_id: Hashable) -> None:
        row = self.rows.pop(seq_id, None)
        if row is not None:
            self.cache.add(row.finished_tokens(self.options.use_prompts))


def make_suffix(context: ProposerContext, options: SuffixOptions) -> SuffixProposer:
    return SuffixProposer(options, context.num_speculative_tokens)


@hookimpl
def register_proposers(register):
    register.proposer("suffix", make_suffix, options=SuffixOptions, capabilities=ProposerCapabilities(stateful=True))
