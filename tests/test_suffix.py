"""The ``suffix`` proposer: its suffix tree (global cache) and suffix automaton (per request) against
brute force on tiny token lists, eviction and bounds, per-row state and release, option errors; then
on the real model: greedy output identical to plain decoding (batch 1 and 4, three workloads) and
lossless sampling (chi-square)."""

from __future__ import annotations

import random
from array import array
from collections import Counter

import numpy as np
import pytest

from specplug.errors import ConfigError
from specplug.metadata import (
    DraftRequest,
    ProposerContext,
    SamplingParams,
    VerifyOutcome,
)
from specplug.proposers.suffix import SuffixOptions, SuffixProposer, path_score
from specplug.proposers.suffix_automaton import SuffixAutomaton
from specplug.proposers.suffix_tree import GlobalCache


# ---- brute-force references -------------------------------------------------------------------
def followers(seqs, context, depth=None):
    """Counter of the tokens that follow each occurrence of ``context`` (an occurrence starting at p
    sees at most ``depth`` tokens from p, as the tree's suffixes are cut)."""
    found = Counter()
    for s in seqs:
        for p in range(len(s) - len(context)):
            end = len(s) if depth is None else min(p + depth, len(s))
            if s[p : p + len(context)] == context and p + len(context) < end:
                found[s[p + len(context)]] += 1
    return found


def occurs(seqs, context):
    return any(s[p : p + len(context)] == context for s in seqs for p in range(len(s) - len(context) + 1))


def check_path(seqs, context, tokens, counts, max_tokens, min_prob, depth=None):
    """``tokens`` follow the most frequent continuation from ``context`` while the path's probability
    stays >= min_prob; ``counts`` are each token's (occurrences going on that way, going on at all)."""
    prob = 1.0
    for token, (count, total) in zip(tokens, counts, strict=True):
        found = followers(seqs, context, depth)
        assert found[token] == max(found.values()), (context, token, found)
        assert (count, total) == (found[token], sum(found.values())), (context, token, found, count, total)
        prob *= count / total
        context = context + [token]
    assert prob >= min_prob - 1e-12
    if len(tokens) < max_tokens:
        found = followers(seqs, context, depth)
        assert not found or prob * max(found.values()) / sum(found.values()) < min_prob + 1e-12


# ---- the global cache's suffix tree ---------------------------------------------------------------
def test_tree_matches_and_drafts_like_brute_force_through_evictions():
    rng = random.Random(0)
    for _ in range(150):
        vocab, depth = rng.choice([2, 3, 5, 20]), rng.randrange(1, 12)
        max_tokens, max_requests = rng.choice([10, 40, 1000]), rng.choice([None, 1, 2, 5])
        cache, live = GlobalCache(depth, max_tokens, max_requests), []
        for _ in range(rng.randrange(1, 12)):
            seq = [rng.randrange(vocab) for _ in range(rng.randrange(0, 30))]
            cache.add(array("i", seq))
            if seq and len(seq) <= max_tokens:
                live.append(seq)
                while sum(map(len, live)) > max_tokens or (max_requests and len(live) > max_requests):
                    live.pop(0)  # oldest first
            assert [list(s) for s in cache.tree.seqs.values()] == live and cache.num_tokens == sum(map(len, live))
            for _ in range(3):
                source = rng.choice(live) if live and rng.random() < 0.5 else [rng.randrange(vocab) for _ in range(14)]
                start = rng.randrange(len(source))
                pattern = source[start : start + rng.randrange(1, 15)]
                k, min_prob = rng.randrange(1, 8), rng.choice([0.0, 0.1, 0.3])
                match_len, place = cache.tree.longest_match(array("i", pattern))
                expected = max((n for n in range(1, min(len(pattern), depth) + 1) if occurs(live, pattern[-n:])),
                               default=0)
                assert match_len == expected
                if match_len:
                    tokens, counts = cache.tree.continuation(place, k, min_prob)
                    check_path(live, pattern[-match_len:], tokens, counts, k, min_prob, depth)
        while cache.tree.order:
            cache.tree.remove_oldest()
        assert not cache.tree.edges and cache.tree.nodes == 1  # nothing left behind


def test_tree_draft_probabilities_by_hand():
    cache = GlobalCache(depth=8, max_tokens=100, max_requests=None)
    for seq in ([1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4]):
        cache.add(array("i", seq))
    pattern = array("i", [9, 1, 2])
    tokens, counts = cache.draft(pattern, lambda n: 5, 0.0)  # "1 2" went on "3 4" twice, "3 5" once
    assert (tokens, counts) == ([3, 4], [(3, 3), (2, 3)]) and path_score(counts) == pytest.approx(1 + 2 / 3)
    assert cache.draft(pattern, lambda n: 5, 0.7)[0] == [3]  # 2/3 < 0.7: stop before 4
    assert cache.draft(pattern, lambda n: n // 2, 0.0)[0] == [3]  # the limit is a function of the match
    assert cache.draft(array("i", [7]), lambda n: 5, 0.0) == ([], [])


def test_cache_bounds_evict_whole_requests_oldest_first():
    by_tokens = GlobalCache(depth=4, max_tokens=10, max_requests=None)
    for i in range(5):
        by_tokens.add(array("i", [i] * 4))
    assert by_tokens.num_tokens == 8 and [s[0] for s in by_tokens.tree.seqs.values()] == [3, 4]
    by_tokens.add(array("i", range(11)))  # longer than the whole cache: not kept, nothing evicted
    assert by_tokens.num_requests == 2
    by_requests = GlobalCache(depth=4, max_tokens=1000, max_requests=2)
    for i in range(5):
        by_requests.add(array("i", [i, i + 1]))
    assert [list(s) for s in by_requests.tree.seqs.values()] == [[3, 4], [4, 5]]
    assert by_requests.draft(array("i", [0]), lambda n: 3, 0.0)[0] == []  # evicted text is gone


# ---- the per-request suffix automaton --------------------------------------------------------------
def test_automaton_matches_and_drafts_like_brute_force():
    rng = random.Random(1)
    for _ in range(200):
        vocab, max_len, k = rng.choice([2, 3, 5, 30]), rng.randrange(1, 10), rng.randrange(1, 6)
        min_prob = rng.choice([0.0, 0.2, 0.5])
        automaton, tokens = SuffixAutomaton(max_len + k), []
        for _ in range(rng.randrange(1, 70)):
            tokens.append(rng.randrange(vocab))
            automaton.extend(tokens[-1])
            state, match_len = automaton.longest_match(max_len)
            earlier = [n for n in range(1, min(max_len, len(tokens)) + 1)
                       if occurs([tokens[:-1]], tokens[len(tokens) - n:])]
            assert match_len == max(earlier, default=0)
            if match_len:
                draft, counts = automaton.continuation(state, k, min_prob)
                check_path([tokens], tokens[len(tokens) - match_len:], draft, counts, k, min_prob)


def test_automaton_prefers_the_most_frequent_continuation():
    automaton = SuffixAutomaton(bound=8)
    for token in [5, 6, 1, 5, 6, 2, 5, 6, 1, 5, 6]:
        automaton.extend(token)
    state, match_len = automaton.longest_match(4)
    assert match_len == 4  # "6 1 5 6" occurred before
    assert automaton.continuation(state, 3, 0.0)[0] == [2, 5, 6]  # after "6 1 5 6" came "2 5 6"
    state, _ = automaton.longest_match(2)  # "5 6": followed by 1 twice, 2 once
    assert automaton.continuation(state, 1, 0.0) == ([1], [(2, 3)])


# ---- the proposer --------------------------------------------------------------------------------
def proposer(k=4, **options) -> SuffixProposer:
    return SuffixProposer(SuffixOptions(**options), k)


def test_release_feeds_the_global_cache_shared_by_rows():
    sfx = proposer(max_depth=8)
    prompt = [100, 101, 102]
    first = DraftRequest("a", prompt + [7, 8, 9, 10], 3, max_draft_tokens=4)
    assert sfx.propose([first])[0].token_ids == []  # nothing seen before
    sfx.on_verified([VerifyOutcome("a", 0, 0, (11, 12))])  # the last tokens reach no later propose
    sfx.release("a")
    assert "a" not in sfx.rows and list(sfx.cache.tree.seqs[0]) == [7, 8, 9, 10, 11, 12]  # output only
    other = DraftRequest("b", np.array([200, 201, 7, 8]), 2, max_draft_tokens=3)  # numpy rows are fine
    draft = sfx.propose([other])[0]
    assert draft.token_ids == [9, 10] and draft.probs is None  # 2 matched tokens: at most 2 drafted
    assert draft.confidence == [0.5, 0.5]  # seen once: 1 / (1 + 1)
    assert sfx.drafts_from == {"request": 0, "global": 1}
    assert sfx.propose([DraftRequest("b", [200, 201, 7, 8], 2, max_draft_tokens=0)])[0].token_ids == []


def test_request_index_drafts_from_the_prompt_and_is_rebuilt_for_a_reused_id():
    sfx = proposer(max_depth=8, max_cached_tokens=0)  # no global cache
    row = DraftRequest(1, [1, 2, 3, 4, 5, 9, 1, 2, 3], 6, max_draft_tokens=4)
    assert sfx.propose([row])[0].token_ids == [4, 5, 9]  # match "1 2 3" (3 tokens): up to 3 drafted
    reused = DraftRequest(1, [4, 4, 6, 4], 3, max_draft_tokens=4)  # same id, other tokens: start over
    assert sfx.propose([reused])[0].token_ids == [6]  # "4" was followed by 4 then 6: a tie, the later wins
    sfx.release(1)
    assert sfx.rows == {} and sfx.cache.num_tokens == 0


def test_use_prompts_caches_prompts_too():
    sfx = proposer(use_prompts=True)
    sfx.propose([DraftRequest("a", [1, 2, 3, 4], 2, max_draft_tokens=1)])
    sfx.release("a")
    assert list(sfx.cache.tree.seqs[0]) == [1, 2, 3, 4]


def test_cache_bound_holds_over_many_requests():
    sfx, rng = proposer(max_cached_tokens=3000, max_cached_requests=50), random.Random(2)
    templates = [[rng.randrange(50) for _ in range(20)] for _ in range(5)]
    for i in range(600):
        output = rng.choice(templates) + [rng.randrange(50) for _ in range(rng.randrange(1, 20))]
        sfx.propose([DraftRequest(i, [1000 + i % 7] + output, 1, max_draft_tokens=4)])
        sfx.release(i)
        assert sfx.cache.num_tokens <= 3000 and sfx.cache.num_requests <= 50
    assert sfx.rows == {} and sfx.drafts_from["global"] > 0




@pytest.mark.parametrize("options, message", [
    ({"max_depth": 0}, "option 'max_depth' must be an integer from 1 to 256 (got 0)"),
    ({"min_token_prob": 1.5}, "option 'min_token_prob' must be a finite number from 0.0 to 1.0 (got 1.5)"),
    ({"max_cached_requests": 0}, "option 'max_cached_requests' must be an integer >= 1 or null (got 0)"),
    ({"max_cached_tokens": -1}, "option 'max_cached_tokens' must be an integer from 0 to"),
    ({"max_spec_factor": "2"}, "option 'max_spec_factor' must be a finite number from 0.0 to 64.0 (got '2')"),
    ({"use_prompts": "yes"}, "option 'use_prompts' must be true or false (got 'yes')"),
    ({"max_dept": 32}, "has no option 'max_dept' (did you mean 'max_depth'?)"),
])
def test_bad_options(plugin_manager, options, message):
    from specplug.plugins import load_registry

    with pytest.raises(ConfigError) as error:
        load_registry(plugin_manager).create("proposer", "suffix", ProposerContext(4, 100), options=options)
    assert message in str(error.value)


# ---- on the real model ------------------------------------------------------------------------------
MAX_NEW = 48


@pytest.fixture(scope="module")
def workloads(llm):
    from pathlib import Path

    from specplug.prompts import read_prompts_file

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    files = {"repetitive": root / "repetitive.jsonl", "grounded": root / "grounded.jsonl",
             "open_ended": root / "open_ended.jsonl"}
    prompts = {name: [llm.encode(p) for p in read_prompts_file(path)] for name, path in files.items()}
    prompts["repetitive"] = prompts["repetitive"][:12]  # in order: the cache warms up as in production
    return {name: (ids, [llm.generate_ids([p], MAX_NEW)[0].token_ids for p in ids]) for name, ids in prompts.items()}


@pytest.mark.slow
@pytest.mark.parametrize("batch, adaptive_k", [(1, False), (4, "auto")])
def test_greedy_equals_plain(llm, workloads, assert_same_greedy, batch, adaptive_k):
    """Fixed k at batch 1; at batch 4 ``auto`` cuts the drafts each step by their calibrated confidence."""
    variant = llm.variant("suffix", num_speculative_tokens=6, max_batch_size=batch, adaptive_k=adaptive_k)
    drafted = accepted = 0
    for name, (prompts, plain) in workloads.items():
        for start in range(0, len(prompts), batch):
            for ids, expected, completion in zip(prompts[start : start + batch], plain[start : start + batch],
                                                 variant.generate_ids(prompts[start : start + batch], MAX_NEW)):
                assert_same_greedy(ids, expected, completion.token_ids, f"suffix {name} batch {batch}")
                drafted += completion.stats["draft_tokens"]
                accepted += completion.stats["accepted_tokens"]
    assert 0 < accepted < drafted  # acceptances and rejections (rollbacks) both happened
    assert variant.proposer.drafts_from["global"] > 0 and variant.proposer.drafts_from["request"] > 0
    assert variant.proposer.rows == {}  # every row released
    if adaptive_k == "auto":
        assert variant.engine.strategy.policy.confident and len(variant.engine.strategy.policy.chosen) > 1


def sample_triples(llm, proposer, seed, rows=32, rounds=25):
    """``rows * rounds`` independent samples of the first three tokens after a short prompt."""
    variant = llm.variant(proposer, num_speculative_tokens=2, max_batch_size=rows, max_model_len=32,
                          sampling=SamplingParams(temperature=1.0, top_k=3, seed=seed))
    prompt = variant.encode("The best thing about the weekend is")
    samples, drafted = Counter(), 0
    for round_ in range(rounds):
        seeds = [seed * 100_000 + round_ * rows + i for i in range(rows)]
        for completion in variant.generate_ids([prompt] * rows, 3, seeds=seeds):
            samples[tuple(completion.token_ids)] += 1
            drafted += completion.stats["draft_tokens"]
    return samples, drafted


@pytest.mark.slow
def test_sampling_is_lossless(llm):
    """Two-sample chi-square: token triples sampled with suffix drafts vs plain sampling, same filters.
    The global cache fills with earlier rounds' outputs, so most drafts come from it."""
    from scipy.stats import chi2_contingency

    speculative, drafted = sample_triples(llm, "suffix", seed=21)
    plain, _ = sample_triples(llm, "none", seed=22)
    common = [key for key in set(speculative) | set(plain) if speculative[key] + plain[key] >= 10]
    rare = [key for key in set(speculative) | set(plain) if key not in common]
    table = [[speculative[k] for k in common] + [sum(speculative[k] for k in rare)],
             [plain[k] for k in common] + [sum(plain[k] for k in rare)]]
    assert drafted > 0 and len(common) >= 4
    assert chi2_contingency(table)[1] > 1e-3, table
