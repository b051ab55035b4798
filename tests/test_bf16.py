"""bfloat16 (AMX / AVX-512-BF16 where the CPU has them): speculation equals plain decoding of the same
engine in bf16, except where the top two logits lie within rounding (docs/benchmarks.md, bf16)."""

from __future__ import annotations

import pytest
import torch

from specplug.models.ties import first_mismatch
from tests.conftest import plain_llm
from tests.prompts import GROUNDED, OPEN_ENDED

pytestmark = pytest.mark.slow
MAX_NEW = 48


@pytest.fixture(scope="module")
def bf16_llm():
    return plain_llm("dtype=bfloat16")


@pytest.fixture(scope="module")
def bf16_hf(bf16_llm):
    from specplug.models.loader import load_hf_model

    return load_hf_model(bf16_llm.model_dir, torch.bfloat16)


def test_bf16_weights_and_cache(bf16_llm):
    assert bf16_llm.model.dtype == torch.bfloat16
    assert bf16_llm.engine.cache.layer(0)[0].dtype == torch.bfloat16


def test_bf16_ngram_equals_bf16_plain_up_to_rounding_ties(bf16_llm, bf16_hf):
    prompts = [bf16_llm.encode(p) for p in GROUNDED + OPEN_ENDED]
    plain = [bf16_llm.generate_ids([ids], MAX_NEW)[0].token_ids for ids in prompts]
    ngram = bf16_llm.variant("ngram")
    runs = {"batch 1": [ngram.generate_ids([ids], MAX_NEW)[0].token_ids for ids in prompts],
            "batch 4": [c.token_ids for c in ngram.variant(max_batch_size=4).generate_ids(prompts, MAX_NEW)]}
    for label, outputs in runs.items():
        for ids, reference, other in zip(prompts, plain, outputs):
            mismatch = first_mismatch(bf16_hf, ids, reference, other)
            if mismatch is not None:
                print(f"bf16 {label}: parts at {mismatch['position']}, gap {mismatch['gap']} "
                      f"(rounding threshold {mismatch['threshold']:.3f})")
                assert mismatch["near_tie"], f"bf16 {label}: differs beyond rounding: {mismatch}"
