"""draft_model and layerskip on the real model: exact greedy equality, lossless sampling, clear errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy.stats import chi2_contingency

from specplug.distill import build_draft
from specplug.errors import ConfigError
from specplug.metadata import SamplingParams
from tests.prompts import GROUNDED, OPEN_ENDED

pytestmark = pytest.mark.slow
MAX_NEW = 40
SKIP_SETS = [{"skip_attention": [15]}, {"skip_layers": [13, 14, 15, 16]}, {"exit_layer": 20},
             {"skip_mlp": [12], "skip_attention": [18]}]


@pytest.fixture(scope="module")
def draft_dir(llm, hf_model, tmp_path_factory):
    """An undistilled 8-layer draft cut from the target (what `specplug make-draft --distill-steps 0` makes)."""
    path = tmp_path_factory.mktemp("draft")
    build_draft(hf_model, [0, 4, 8, 12, 17, 21, 25, 29]).save_pretrained(path)
    llm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(llm):
    prompts = [llm.encode(p) for p in GROUNDED + OPEN_ENDED]
    return prompts, [llm.generate_ids([ids], MAX_NEW)[0].token_ids for ids in prompts]


def check_equal(variant, reference, assert_same_greedy, label):
    prompts, outputs = reference
    completions = variant.generate_ids(prompts, MAX_NEW)
    for ids, plain, completion in zip(prompts, outputs, completions):
        assert_same_greedy(ids, plain, completion.token_ids, label)
    return completions


@pytest.mark.parametrize("options", SKIP_SETS, ids=lambda o: str(o))
def test_layerskip_greedy_equals_plain_in_a_batch(llm, reference, assert_same_greedy, options):
    completions = check_equal(llm.variant("layerskip", **options), reference, assert_same_greedy, "layerskip")
    assert sum(c.stats["accepted_tokens"] for c in completions) > 0


def test_layerskip_batch_1_with_adaptive_k_and_confidence(llm, reference, assert_same_greedy):
    variant = llm.variant("layerskip", num_speculative_tokens=5, max_batch_size=1, adaptive_k=True,
                          skip_attention=[15], confidence_threshold=0.5)
    prompts, outputs = reference
    for ids, plain in zip(prompts, outputs):
        assert_same_greedy(ids, plain, variant.generate_ids([ids], MAX_NEW)[0].token_ids, "layerskip b1")


def test_draft_model_greedy_equals_plain(llm, reference, assert_same_greedy, draft_dir):
    variant = llm.variant("draft_model", model=str(draft_dir))
    completions = check_equal(variant, reference, assert_same_greedy, "draft_model batch")
    assert sum(c.stats["draft_tokens"] for c in completions) > 0
    single = llm.variant("draft_model", max_batch_size=1, model=str(draft_dir))
    prompts, outputs = reference
    assert_same_greedy(prompts[0], outputs[0], single.generate_ids([prompts[0]], MAX_NEW)[0].token_ids,
                       "draft_model b1")


def test_adaptive_k_varies_the_draft_length_and_stays_exact(llm, reference, assert_same_greedy):
    variant = llm.variant("layerskip", num_speculative_tokens=6, adaptive_k=True, skip_layers=[13, 14, 15, 16])
    seen = []
    propose = variant.proposer.propose
    variant.proposer.propose = lambda requests: seen.extend(r.max_draft_tokens for r in requests) or propose(
        requests)
    check_equal(variant, reference, assert_same_greedy, "adaptive k")
    assert {1, 6} <= set(seen)  # grew to the bound after full acceptances, shrank after rejections


def sample_tokens(llm, proposer, seed, count=3, rows=32, rounds=25, **options):
    """``rows * rounds`` independent samples of the first ``count`` tokens after a short prompt."""
    sampling = SamplingParams(temperature=1.0, top_k=3, seed=seed)
    variant = llm.variant(proposer, num_speculative_tokens=2, max_batch_size=rows, sampling=sampling,
                          max_model_len=32, **options)
    prompt = variant.encode("The best thing about the weekend is")
    samples = Counter()
    for round_ in range(rounds):
        seeds = [seed * 100_000 + round_ * rows + i for i in range(rows)]  # independent draws
        for completion in variant.generate_ids([prompt] * rows, count, seeds=seeds):
            samples[tuple(completion.token_ids)] += 1
    return samples


@pytest.mark.parametrize("proposer", ["layerskip", "draft_model"])
def test_sampling_is_lossless_end_to_end(llm, draft_dir, proposer):
    """Two-sample chi-square: token triples sampled with speculation vs plain sampling, same filters."""
    options = {"skip_layers": [13, 14, 15, 16]} if proposer == "layerskip" else {"model": str(draft_dir)}
    speculative = sample_tokens(llm, proposer, seed=11, **options)
    plain = sample_tokens(llm, "none", seed=12)
    common = [key for key in set(speculative) | set(plain) if speculative[key] + plain[key] >= 10]
    rare = [key for key in set(speculative) | set(plain) if key not in common]
    table = [[speculative[k] for k in common] + [sum(speculative[k] for k in rare)],
             [plain[k] for k in common] + [sum(plain[k] for k in rare)]]
    assert len(common) >= 4  # the test compares a real distribution, not one dominant outcome
    p_value = chi2_contingency(table)[1]
    assert p_value > 1e-3, (p_value, table)


def test_draft_model_errors(llm, tmp_path, draft_dir):
    with pytest.raises(ConfigError, match="draft model '.*missing' not found .*specplug make-draft"):
        llm.variant("draft_model", model=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="proposer 'draft_model' needs option 'model' .*set proposer.model"):
        llm.variant("draft_model")
    other = tmp_path / "other-tokenizer"
    build_draft(_hf(llm), [0, 29]).save_pretrained(other)
    tokenizer = llm.tokenizer.__class__.from_pretrained(draft_dir)
    tokenizer.add_tokens(["<extra-token-a>", "<extra-token-b>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ConfigError, match="tokenizer mismatch: draft model"):
        llm.variant("draft_model", model=str(other))


def _hf(llm):
    from specplug.models.loader import load_hf_model

    return load_hf_model(llm.model_dir, torch.float32)


@pytest.mark.parametrize("options, message", [
    ({}, "skips nothing"),
    ({"skip_layers": [30]}, "skip_layers must be a list of layer indices in 0..29"),
    ({"exit_layer": 30}, "exit_layer must be an integer in 1..29"),
    ({"exit_layer": 0}, "option 'exit_layer' must be an integer >= 1 or null \\(got 0\\)"),
    ({"skip_layers": [-1]}, "option 'skip_layers' must be a list of integers >= 0 \\(got -1\\)"),
    ({"skip_layers": "13"}, "option 'skip_layers' must be a list of integers >= 0"),
    ({"skip_attention": [3], "confidence_threshold": 1.5}, "option 'confidence_threshold' must be a finite number in \\[0, 1\\)"),
])
def test_layerskip_option_errors(llm, options, message):
    with pytest.raises(ConfigError, match=message):
        llm.variant("layerskip", **options)
