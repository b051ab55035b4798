"""Greedy decoding through speculation equals plain greedy decoding and HF generate (fp32, real model)."""

from __future__ import annotations

import random

import pytest

from specplug.engine.engine import Engine, Request
from specplug.metadata import Draft
from specplug.proposers.base import Proposer
from specplug.verifiers.rejection import RejectionSampler
from tests.prompts import GROUNDED, OPEN_ENDED

pytestmark = pytest.mark.slow
MAX_NEW = 48


@pytest.fixture(scope="module")
def reference(llm):
    """Plain greedy decoding (proposer none), one prompt at a time."""
    prompts = [llm.encode(p) for p in GROUNDED + OPEN_ENDED]
    outputs = [llm.generate_ids([ids], MAX_NEW)[0].token_ids for ids in prompts]
    return prompts, outputs


def test_plain_engine_matches_hf_generate(llm, hf_model, reference, assert_same_greedy):
    from specplug.bench import hf_generate

    for ids, plain in zip(*reference):
        assert_same_greedy(ids, hf_generate(hf_model, ids, MAX_NEW, llm.eos_token_ids), plain, "HF vs plain")


@pytest.mark.parametrize("k", [1, 4, 8])
def test_ngram_equals_plain_batch_1(llm, reference, assert_same_greedy, k):
    ngram = llm.variant("ngram", num_speculative_tokens=k, min_n=1, max_n=3)
    drafted = accepted = 0
    for ids, plain in zip(*reference):
        completion = ngram.generate_ids([ids], MAX_NEW)[0]
        assert_same_greedy(ids, plain, completion.token_ids, f"ngram k={k}")
        drafted += completion.stats["draft_tokens"]
        accepted += completion.stats["accepted_tokens"]
    assert 0 < accepted < drafted  # both acceptances and rejections (rollbacks) happened


def test_ngram_equals_plain_batch_4_rows_of_different_lengths(llm, reference, assert_same_greedy):
    prompts, outputs = reference
    assert len({len(p) for p in prompts}) == len(prompts)
    batch = llm.variant("ngram").generate_ids(prompts, MAX_NEW)
    for ids, plain, completion in zip(prompts, outputs, batch):
        assert_same_greedy(ids, plain, completion.token_ids, "ngram batch 4")


class NoisyOracle(Proposer):
    """Drafts the known plain-decoding continuation, corrupted at random: rows accept 0..k tokens."""

    name = "noisy-oracle"

    def __init__(self, continuations, error_rate, vocab, seed=0):
        self.continuations, self.error_rate, self.vocab = continuations, error_rate, vocab
        self.rng = random.Random(seed)

    def propose(self, requests):
        drafts = []
        for r in requests:
            done = len(r.token_ids) - r.num_prompt_tokens
            truth = self.continuations[r.seq_id][done : done + r.max_draft_tokens]
            drafts.append(Draft([t if self.rng.random() > self.error_rate else self.rng.randrange(self.vocab)
                                 for t in truth]))
        return drafts


class RecordingVerifier(RejectionSampler):
    def __init__(self):
        self.accepted_lengths = set()

    def verify(self, batch):
        result = super().verify(batch)
        self.accepted_lengths.update(result.num_accepted.tolist())
        return result


@pytest.mark.parametrize("error_rate", [0.15, 1.0])
def test_partial_acceptance_and_rollback_stay_exact(llm, reference, assert_same_greedy, error_rate):
    """Every accepted length 0..k occurs, in rows of one batch that accept different amounts."""
    prompts, outputs = reference
    verifier = RecordingVerifier()
    engine = Engine(llm.model, llm.tokenizer, NoisyOracle(outputs, error_rate, llm.model.shape.vocab_size),
                    verifier, num_speculative_tokens=6, max_batch_size=4, eos_token_ids=llm.eos_token_ids)
    results = {out.request_id: out.row.token_ids[len(out.row.request.prompt_token_ids):]
               for out in engine.run([Request(i, p, MAX_NEW) for i, p in enumerate(prompts)])
               if out.finish_reason}
    for i, (ids, plain) in enumerate(zip(prompts, outputs)):
        assert_same_greedy(ids, plain, results[i], f"noisy oracle {error_rate}")
    if error_rate == 1.0:
        assert verifier.accepted_lengths == {0}
    else:
        assert {0, 1, 6} <= verifier.accepted_lengths


def test_rows_join_and_leave_between_steps(llm, reference, assert_same_greedy):
    """Six requests through two slots, with different lengths: rows finish and new ones take their slot."""
    prompts, outputs = reference
    spec = llm.variant("ngram", max_batch_size=2)
    lengths = [MAX_NEW, 7, 30, 12]
    requests = [Request(i, p, n, spec.config.sampling) for i, (p, n) in enumerate(zip(prompts, lengths))]
    busy_slots = []
    results = {}
    for request in requests:
        spec.engine.add_request(request)
    while spec.engine.has_unfinished():
        for out in spec.engine.step():
            if out.finish_reason:
                results[out.request_id] = out.row.token_ids[len(out.row.request.prompt_token_ids):]
        busy_slots.append(len(spec.engine.rows))
    assert max(busy_slots) == 2
    for i, (ids, plain) in enumerate(zip(prompts, outputs)):
        expected = plain[: lengths[i]]  # plain decoding may have stopped at EOS earlier
        assert len(results[i]) == len(expected)
        assert_same_greedy(ids, expected, results[i], f"join/leave row {i}")
