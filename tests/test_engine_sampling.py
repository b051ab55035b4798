"""Sampling through the engine on the real model (the distributional proof is in test_verifier.py)."""

from __future__ import annotations

import pytest
import torch

from specplug.metadata import SamplingParams
from specplug.sampling import target_probs
from tests.prompts import GROUNDED

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
