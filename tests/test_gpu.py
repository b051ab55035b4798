"""CUDA path of the embedded engine. Needs a CUDA GPU: run `scripts/test-gpu` on a GPU machine.

No GPU was available to this project's CI or development machines, so these tests are skipped there
(and have not been run yet); they check the same properties as the CPU tests, on `device: cuda`.
"""

from __future__ import annotations

import pytest
import torch

from specplug.config import load_config
from tests.prompts import GROUNDED, OPEN_ENDED

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def cuda_llm():
    from specplug.llm import LLM

    return LLM(load_config(overrides=["device=cuda", "proposer.name=none"]), max_batch_size=4)


def test_static_cache_lives_on_the_gpu_in_gqa_layout(cuda_llm):
    k_cache, _ = cuda_llm.engine.cache.layer(0)
    shape = cuda_llm.model.shape
    assert k_cache.is_cuda and k_cache.shape[1] == shape.kv_heads < shape.q_heads


def test_ngram_equals_plain_on_cuda(cuda_llm, assert_same_greedy):
    prompts = [cuda_llm.encode(p) for p in GROUNDED + OPEN_ENDED]
    plain = [cuda_llm.generate_ids([ids], 48)[0].token_ids for ids in prompts]
    batch = cuda_llm.variant("ngram").generate_ids(prompts, 48)
    for ids, reference, completion in zip(prompts, plain, batch):
        assert_same_greedy(ids, reference, completion.token_ids, "cuda ngram batch 4")


def test_sampling_on_cuda_is_seeded(cuda_llm):
    from specplug.metadata import SamplingParams

    sampling = SamplingParams(0.8, 40, 0.95, seed=5)
    runs = [cuda_llm.variant("ngram", sampling=sampling).generate([GROUNDED[1]], 24)[0].token_ids
            for _ in range(2)]
    assert runs[0] == runs[1]
