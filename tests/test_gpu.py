"""CUDA path of the embedded engine: the static GQA cache on the GPU, and CUDA graphs of the decode,
verify and model-drafter steps. Needs a CUDA GPU: run `scripts/test-gpu` on a GPU machine.

No GPU has been available to this project's CI or development machines, so these tests are skipped
there and HAVE NOT BEEN RUN yet. They check, on `device: cuda`, the properties the CPU tests check, plus
graph capture: greedy output with graphs equals eager output (and plain decoding), through rollbacks.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import plain_llm
from tests.prompts import GROUNDED, OPEN_ENDED

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MAX_NEW = 48


@pytest.fixture(scope="module")
def cuda_llm():
    return plain_llm("device=cuda")


@pytest.fixture(scope="module")
def eager_llm(cuda_llm):
    return plain_llm("device=cuda", "enforce_eager=true")


@pytest.fixture(scope="module")
def prompts(cuda_llm):
    return [cuda_llm.encode(p) for p in GROUNDED + OPEN_ENDED]


def test_static_cache_lives_on_the_gpu_in_gqa_layout(cuda_llm):
    k_cache, _ = cuda_llm.engine.cache.layer(0)
    shape = cuda_llm.model.shape
    assert k_cache.is_cuda and k_cache.shape[1] == shape.kv_heads < shape.q_heads


def test_graphs_captured_per_bucket_and_none_with_enforce_eager(cuda_llm, eager_llm, prompts):
    spec, eager = cuda_llm.variant("ngram"), eager_llm.variant("ngram")
    spec.generate_ids(prompts, 16)
    eager.generate_ids(prompts, 16)
    captured = [key for key, step in spec.engine.runner.static.items() if step.graph is not None]
    assert captured and all(b in (1, 2, 4) and t in (1, 2, 4) for b, t, _ in captured)
    assert spec.engine.runner.graphs and not eager.engine.runner.graphs
    assert all(step.graph is None for step in eager.engine.runner.static.values())


@pytest.mark.parametrize("proposer", ["none", "ngram"])
def test_graph_replay_equals_eager_and_plain(cuda_llm, eager_llm, prompts, assert_same_greedy, proposer):
    plain = [eager_llm.generate_ids([ids], MAX_NEW)[0].token_ids for ids in prompts]
    for label, llm in (("graphs", cuda_llm), ("eager", eager_llm)):
        batch = llm.variant(proposer).generate_ids(prompts, MAX_NEW)
        for ids, reference, completion in zip(prompts, plain, batch):
            assert_same_greedy(ids, reference, completion.token_ids, f"cuda {label} {proposer} batch 4")


def test_graph_replay_after_rollbacks(cuda_llm, eager_llm, prompts, assert_same_greedy):
    from specplug.engine.engine import Engine, Request
    from tests.test_engine_greedy import NoisyOracle, RecordingVerifier

    plain = {i: eager_llm.generate_ids([ids], MAX_NEW)[0].token_ids for i, ids in enumerate(prompts)}
    verifier = RecordingVerifier()
    engine = Engine(cuda_llm.model, cuda_llm.tokenizer, NoisyOracle(plain, 0.2, cuda_llm.model.shape.vocab_size),
                    verifier, num_speculative_tokens=3, max_batch_size=4, eos_token_ids=cuda_llm.eos_token_ids)
    results = {out.request_id: out.row.token_ids[len(out.row.request.prompt_token_ids):]
               for out in engine.run([Request(i, p, MAX_NEW) for i, p in enumerate(prompts)]) if out.finish_reason}
    assert {0, 3} <= verifier.accepted_lengths
    for i, ids in enumerate(prompts):
        assert_same_greedy(ids, plain[i], results[i], "cuda graphs noisy oracle")


def test_layerskip_drafter_steps_are_captured_too(cuda_llm, eager_llm, prompts, assert_same_greedy):
    plain = [eager_llm.generate_ids([ids], MAX_NEW)[0].token_ids for ids in prompts]
    spec = cuda_llm.variant("layerskip", skip_mlp=[10, 12, 14, 16])
    batch = spec.generate_ids(prompts, MAX_NEW)
    for ids, reference, completion in zip(prompts, plain, batch):
        assert_same_greedy(ids, reference, completion.token_ids, "cuda graphs layerskip")
    assert any(step.graph is not None for step in spec.proposer.runner.static.values())


def test_sampling_on_cuda_is_seeded(cuda_llm):
    from specplug.metadata import SamplingParams

    sampling = SamplingParams(0.8, 40, 0.95, seed=5)
    runs = [cuda_llm.variant("ngram", sampling=sampling).generate([GROUNDED[1]], 24)[0].token_ids
            for _ in range(2)]
    assert runs[0] == runs[1]
