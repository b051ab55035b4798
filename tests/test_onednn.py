"""oneDNN's prepacked linear on the real model: the same logits as F.linear within fp32 rounding, and
speculation token-identical to plain decoding of the same engine (issue 22: a kernel candidate must
give greedy output identical to plain decoding, or stay out)."""

from __future__ import annotations

import pytest
import torch

from specplug.models import kernels
from tests.conftest import plain_llm
from tests.prompts import GROUNDED, OPEN_ENDED

pytestmark = pytest.mark.slow
MAX_NEW = 48


@pytest.fixture(scope="module")
def packed_llm():
    if "onednn" not in kernels.available(torch.float32, torch.device("cpu")):
        pytest.skip("this torch build has no oneDNN")
    return plain_llm("linear_kernel=onednn")


def test_packed_weights_give_f_linear_s_logits_and_next_tokens(packed_llm):
    reference = plain_llm("linear_kernel=linear").model
    model = packed_llm.model
    assert model.kernels.layout == "packed" and reference.kernels.layout == "rows"
    ids = torch.tensor([packed_llm.encode(GROUNDED[0])])
    positions = torch.arange(ids.shape[1])[None]
    with torch.inference_mode():
        packed = model(ids, positions, model.new_cache(1, ids.shape[1]), slice(0, 1))
        plain = reference(ids, positions, reference.new_cache(1, ids.shape[1]), slice(0, 1))
    assert (packed - plain).abs().max() < 1e-3 * plain.abs().max()
    agree = (packed.argmax(-1) == plain.argmax(-1)).float().mean()
    assert agree > 0.97, f"next-token choices agree at only {agree:.1%} of {ids.shape[1]} positions"


def test_packed_speculation_equals_packed_plain_decoding(packed_llm, assert_same_greedy):
    prompts = [packed_llm.encode(p) for p in GROUNDED + OPEN_ENDED]
    plain = [packed_llm.generate_ids([ids], MAX_NEW)[0].token_ids for ids in prompts]
    ngram = packed_llm.variant("ngram")
    runs = {"batch 1": [ngram.generate_ids([ids], MAX_NEW)[0] for ids in prompts],
            "batch 4": ngram.variant(max_batch_size=4).generate_ids(prompts, MAX_NEW)}
    for label, completions in runs.items():
        assert sum(c.stats["accepted_tokens"] for c in completions) > 0, f"{label}: verify passes of several rows ran"
        for ids, reference, completion in zip(prompts, plain, completions):
            assert_same_greedy(ids, reference, completion.token_ids, f"onednn {label}")
