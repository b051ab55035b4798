from __future__ import annotations

import random

import numpy as np
import pytest

from specplug.errors import ConfigError
from specplug.metadata import DraftRequest, ProposerContext
from specplug.proposers.ngram import NgramIndex, NgramProposer


def brute_force(tokens, min_n, max_n, k):
    """Reference prompt lookup: longest suffix n-gram, latest earlier occurrence, what followed it."""
    for n in range(max_n, min_n - 1, -1):
        if len(tokens) <= n:
            continue
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + k]
    return []


def test_incremental_index_matches_brute_force_lookup():
    rng = random.Random(0)
    for _ in range(30):
        tokens = [rng.randrange(6) for _ in range(rng.randrange(1, 120))]
        index = NgramIndex(1, 4)
        for end in range(1, len(tokens) + 1):  # grows a few tokens at a time, as accepted tokens do
            if end % 3 == 0 or end == len(tokens):
                index.extend(tokens[:end])
                assert index.lookup(5)[0] == brute_force(tokens[:end], 1, 4, 5)


def test_prefers_longest_then_latest_match():
    index = NgramIndex(1, 3)
    index.extend([1, 2, 3, 9, 2, 3, 8, 5, 1, 2, 3])
    assert index.lookup(2) == ([9, 2], 3)  # the 3-gram 1 2 3 beats the later 2-gram 2 3
    index.extend([1, 2, 3, 9, 2, 3, 8, 5, 1, 2, 3, 4, 3])
    assert index.lookup(3) == ([4, 3], 1)  # only the 1-gram (3,) matches; latest earlier one is at index 10


def test_extend_only_indexes_new_tokens():
    index = NgramIndex(2, 2)
    index.extend(list(range(1000)))
    table = index.tables[2]
    table[(0, 1)] = -5  # mark an entry: re-indexing the old tokens would overwrite it
    index.extend(list(range(1000)) + [7, 8])
    assert table[(0, 1)] == -5 and table[(999, 7)] == 1001


def test_proposer_keeps_one_index_per_row_and_accepts_numpy_rows():
    proposer = NgramProposer(1, 3)
    a = DraftRequest("a", np.array([5, 6, 7, 5, 6]), 5, max_draft_tokens=2)
    b = DraftRequest("b", [1, 2, 1], 3, max_draft_tokens=4)
    assert [d.token_ids for d in proposer.propose([a, b])] == [[7, 5], [2, 1]]
    assert all(d.probs is None for d in proposer.propose([a, b]))
    assert [d.confidence for d in proposer.propose([a, b])] == [[2 / 3, 3 / 4], [1 / 2, 2 / 3]]  # a 2-gram, a 1-gram
    rebuilt = DraftRequest("a", [9, 9, 9], 3, max_draft_tokens=1)  # same id, other tokens: start over
    assert proposer.propose([rebuilt])[0].token_ids == [9]
    proposer.release("a")
    assert "a" not in proposer.indexes
    assert proposer.propose([DraftRequest("b", [1, 2, 1], 3, max_draft_tokens=0)])[0].token_ids == []


def test_a_longer_match_states_a_higher_confidence():
    """Each draft token states m / (m + 1), m its matched context: the n-gram and the draft tokens before it."""
    proposer = NgramProposer(1, 4)
    long = DraftRequest("long", [1, 2, 3, 4, 5, 6, 1, 2, 3, 4], 10, max_draft_tokens=2)  # 4-gram 1 2 3 4
    short = DraftRequest("short", [7, 8, 9, 4, 1, 5, 4], 7, max_draft_tokens=2)  # only the 1-gram (4,)
    drafts = proposer.propose([long, short])
    assert [d.token_ids for d in drafts] == [[5, 6], [1, 5]]
    assert drafts[0].confidence == [4 / 5, 5 / 6] and drafts[1].confidence == [1 / 2, 2 / 3]
    assert proposer.propose([DraftRequest("none", [1, 2, 3], 3, max_draft_tokens=2)])[0].confidence == []


@pytest.mark.parametrize("options, message", [
    ({"min_n": 0}, "option 'min_n' must be an integer from 1 to 64 (got 0)"),
    ({"min_n": 3, "max_n": 2}, "min_n (3) must not exceed max_n (2)"),
    ({"max_n": "4"}, "option 'max_n' must be an integer from 1 to 64 (got '4')"),
    ({"min_n": True}, "option 'min_n' must be an integer from 1 to 64 (got True)"),  # YAML's `true` is not a number
    ({"max_m": 4}, "has no option 'max_m' (did you mean 'max_n'?)"),
])
def test_bad_options(plugin_manager, options, message):
    from specplug.plugins import load_registry

    with pytest.raises(ConfigError) as error:
        load_registry(plugin_manager).create("proposer", "ngram", ProposerContext(4, 100), options=options)
    assert message in str(error.value)
