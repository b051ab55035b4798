"""Sampling through the engine on the real model (the distributional proof is in test_verifier.py)."""

from __future__ import annotations

import pytest
import torch

from specplug.metadata import SamplingParams
from specplug.sampling import target_probs
from tests.prompts import GROUNDED, OPEN_ENDED

pytestmark = pytest.mark.slow


def sample(llm, proposer, seed, temperature=0.8):
    sampling = SamplingParams(temperature, top_k=40, top_p=0.95, seed=seed)
    return llm.variant(proposer, sampling=sampling).generate([GROUNDED[1]], 32)[0]


def test_seeded_sampling_is_reproducible_and_seed_dependent(llm):
    first, again, other = (sample(llm, "ngram", seed) for seed in (1, 1, 2))
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids
    assert first.stats["draft_tokens"] > 0 and first.stats["accepted_tokens"] > 0


def test_sampling_with_drafts_stays_in_the_filtered_support(llm):
    """Every sampled token must have non-zero probability under top-k 40 of the target."""
    completion = sample(llm, "ngram", 3, temperature=1.5)
    prompt = llm.encode(GROUNDED[1])
    tokens = prompt + completion.token_ids
    with torch.inference_mode():
        cache = llm.model.new_cache(1, len(tokens) + 1)
        logits = llm.model(torch.tensor([tokens]), torch.arange(len(tokens))[None], cache, slice(0, 1))
    probs = target_probs(logits[:, len(prompt) - 1 : -1], [SamplingParams(1.5, 40, 0.95)])[0]
    chosen = probs.gather(-1, torch.tensor(completion.token_ids)[:, None])
    assert bool((chosen > 0).all())


@pytest.mark.parametrize("proposer", ["none", "ngram"])
def test_a_seeded_request_gives_the_same_tokens_whatever_shares_its_batch(llm, proposer):
    """Alone, first of four, last of four, and in a second call: one seed, one output."""
    sampling = SamplingParams(0.8, seed=1)
    variant = llm.variant(proposer, sampling=sampling, max_batch_size=4)
    prompts = [variant.encode(p) for p in GROUNDED + OPEN_ENDED]
    alone = variant.generate_ids([prompts[1]], 24, seeds=[1])[0].token_ids
    first = variant.generate_ids([prompts[1], *prompts[:3]], 24, seeds=[1, 5, 6, 7])[0].token_ids
    last = variant.generate_ids([prompts[0], prompts[2], prompts[3], prompts[1]], 24,
                                seeds=[8, 9, 10, 1])[3].token_ids
    again = variant.generate_ids([prompts[1]], 24, seeds=[1])[0].token_ids
    assert alone == first == last == again
    other_seed = variant.generate_ids([prompts[1]], 24, seeds=[2])[0].token_ids
    assert other_seed != alone  # the seed matters (the test could fail)


def test_logprobs_with_speculation_equal_those_of_plain_decoding(llm):
    """The emitted tokens' log-probabilities (and top-5) under ngram equal plain decoding's within 1e-4."""
    from specplug.engine.engine import Request

    prompt = llm.encode(GROUNDED[0])
    runs = {}
    for proposer in ("none", "ngram"):
        engine = llm.variant(proposer).engine
        outputs = list(engine.run([Request("r", prompt, 40, logprobs=5)]))
        runs[proposer] = [lp for out in outputs for lp in out.logprobs]
        assert sum(out.num_accepted for out in outputs) > 0 or proposer == "none"
    plain, spec = runs["none"], runs["ngram"]
    assert [lp.token_id for lp in plain] == [lp.token_id for lp in spec]
    assert len(plain) == 40
    for a, b in zip(plain, spec):
        assert abs(a.logprob - b.logprob) < 1e-4
        assert a.logprob <= 0 and a.top[0][1] >= a.logprob - 1e-6  # the best is at least the chosen
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a.top, b.top)) < 1e-4


def test_one_llm_from_two_threads_gives_each_caller_its_own_output(llm):
    """Calls from several threads are serialised: each result equals the same call made alone."""
    import threading

    variant = llm.variant("ngram")
    prompts = [variant.encode(p) for p in GROUNDED + OPEN_ENDED]
    alone = [variant.generate_ids([ids], 16)[0].token_ids for ids in prompts]
    results = {}

    def call(i):
        results[i] = variant.generate_ids([prompts[i]], 16)[0].token_ids

    for _ in range(2):
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [results[i] for i in range(len(prompts))] == alone


def test_the_same_prompt_sampled_many_times_in_one_run_gives_independent_samples(llm):
    """600 copies of one prompt in one call: their first tokens follow the target's distribution (not one
    sample copied 600 times), the run is reproducible from the engine's seed, and another seed differs."""
    from tests.test_verifier import ALPHA, _pvalue

    sampling = SamplingParams(1.0, top_k=20, seed=0)
    variant = llm.variant("ngram", sampling=sampling, max_batch_size=16)
    prompt = variant.encode(OPEN_ENDED[1])
    first = [c.token_ids[0] for c in variant.generate_ids([prompt] * 600, 1)]
    with torch.inference_mode():
        cache = llm.model.new_cache(1, len(prompt) + 1)
        logits = llm.model(torch.tensor([prompt]), torch.arange(len(prompt))[None], cache, slice(0, 1))
    probs = target_probs(logits[:, -1:], [sampling])[0, 0]
    pvalue = _pvalue(torch.tensor(first), probs)
    assert pvalue > ALPHA, f"p={pvalue:.2e}: {len(set(first))} distinct first tokens"
    assert [c.token_ids[0] for c in variant.generate_ids([prompt] * 600, 1)] == first  # same engine seed
    reseeded = llm.variant("ngram", sampling=SamplingParams(1.0, top_k=20, seed=1), max_batch_size=16)
    assert [c.token_ids[0] for c in reseeded.generate_ids([prompt] * 600, 1)] != first
    longer = variant.generate_ids([prompt] * 32, 8)
    assert len({tuple(c.token_ids) for c in longer}) >= 28  # whole samples differ too
