"""The TensorRT-LLM adapter, contract-tested against stand-ins of the upstream classes it touches.

TensorRT-LLM cannot be installed here (CUDA-only wheels), so the classes below mirror exactly the
attributes the adapter uses, read from NVIDIA/TensorRT-LLM's source; each names the file it mirrors.
The one test against the real engine (``-m trtllm``) is skipped unless ``tensorrt_llm`` imports and a
CUDA GPU is present.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import specplug_trtllm.building
import specplug_trtllm.drafter
from specplug.config import load_config
from specplug.errors import ConfigError, SpecplugError
from specplug.metadata import Draft, DraftRequest, SamplingParams
from specplug.models.loader import resolve_model
from specplug_trtllm.logits import logits_to_probs, pad_logits, probs_to_logits
from specplug.hosting.building import EngineShape

MODEL = str(resolve_model("smollm2-135m"))
SHAPE = EngineShape(4, 49152, 8, 512, MODEL, MODEL, "cpu")
REPEATING = [5, 6, 8, 9, 5, 6, 8, 9, 5, 6]  # ngram drafts [8, 9, 5, ...] after it


# ---- stand-ins ----------------------------------------------------------------------------------
class Drafter11:
    """tensorrt_llm/_torch/speculative/drafter.py, v1.1: ``__init__(max_concurrency=None)``."""

    def __init__(self, max_concurrency=None):
        self.max_concurrency = max_concurrency
        self.init_kwargs = {"max_concurrency": max_concurrency}


class Drafter12:
    """tensorrt_llm/_torch/speculative/drafter.py, v1.2: the draft length and its schedule, and
    ``pad_draft_tokens_for_cuda_graph`` padding generation requests to the static length with 0s."""

    def __init__(self, max_draft_len=None, max_total_draft_tokens=None, max_concurrency=None,
                 draft_len_schedule=None):
        self.max_draft_len, self.max_concurrency = max_draft_len, max_concurrency
        self._static_max_total_draft_tokens = max_total_draft_tokens
        self.init_kwargs = {"max_draft_len": max_draft_len, "max_total_draft_tokens": max_total_draft_tokens,
                            "max_concurrency": max_concurrency, "draft_len_schedule": draft_len_schedule}

    def pad_draft_tokens_for_cuda_graph(self, scheduled_requests):
        for req in scheduled_requests.generation_requests:
            req.py_draft_tokens.extend(0 for _ in range(self._static_max_total_draft_tokens - len(req.py_draft_tokens)))


class SamplingConfig:
    """tensorrt_llm/_torch/pyexecutor/llm_request.py (1.1, 1.2): ``sampling_config`` holds one-element
    lists (or None) per field, as the C++ SamplingConfig binding does."""

    def __init__(self, temperature=None, top_k=None, top_p=None, random_seed=None):
        wrap = lambda v: None if v is None else [v]  # noqa: E731
        self.temperature, self.top_k, self.top_p, self.random_seed = map(wrap, (temperature, top_k, top_p, random_seed))


class LlmRequest:
    """tensorrt_llm/_torch/pyexecutor/llm_request.py (1.1, 1.2): the fields a drafter reads and writes."""

    def __init__(self, request_id, prompt, max_new_tokens=64, sampling=None):
        self.py_request_id = request_id
        self.tokens = list(prompt)
        self.py_prompt_len = self.py_orig_prompt_len = len(prompt)
        self.py_max_new_tokens = max_new_tokens
        self.py_draft_tokens: list[int] = []
        self.py_draft_logits = None
        self.py_num_accepted_draft_tokens = 0
        self.sampling_config = sampling or SamplingConfig()

    def get_tokens(self, beam: int):
        assert beam == 0
        return self.tokens


class ScheduledRequests:
    """tensorrt_llm/_torch/pyexecutor/scheduler.py (1.1, 1.2): ``context_requests`` and ``generation_requests``."""

    def __init__(self, context=(), generation=()):
        self.context_requests, self.generation_requests = list(context), list(generation)


class UserProvidedDecodingConfig:
    """tensorrt_llm/llmapi/llm_args.py (1.1, 1.2): ``drafter``, ``resource_manager``, ``max_draft_len``."""

    def __init__(self, max_draft_len, drafter, resource_manager=None):
        self.max_draft_len, self.drafter, self.resource_manager = max_draft_len, drafter, resource_manager


class Eagle3DecodingConfig:
    """tensorrt_llm/llmapi/llm_args.py (1.2): an EagleDecodingConfig whose fields include ``max_draft_len``,
    ``speculative_model``, ``eagle3_one_model`` and ``eagle3_layers_to_capture`` (a set of layer ids)."""

    FIELDS = {"max_draft_len", "speculative_model", "eagle3_one_model", "eagle3_layers_to_capture"}

    def __init__(self, **kwargs):
        assert set(kwargs) <= self.FIELDS, f"unknown Eagle3DecodingConfig fields {set(kwargs) - self.FIELDS}"
        self.kwargs = kwargs


def install_stand_ins(monkeypatch, drafter_class) -> None:
    names = ["tensorrt_llm", "tensorrt_llm._torch", "tensorrt_llm._torch.speculative",
             "tensorrt_llm._torch.speculative.drafter", "tensorrt_llm.llmapi"]
    modules = {name: types.ModuleType(name) for name in names}
    modules["tensorrt_llm._torch.speculative.drafter"].Drafter = drafter_class
    modules["tensorrt_llm.llmapi"].UserProvidedDecodingConfig = UserProvidedDecodingConfig
    modules["tensorrt_llm.llmapi"].Eagle3DecodingConfig = Eagle3DecodingConfig
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def reload_adapter():
    importlib.reload(specplug_trtllm.drafter)
    importlib.reload(specplug_trtllm.building)
    return specplug_trtllm.drafter.Drafter


@pytest.fixture(params=[Drafter11, Drafter12], ids=["1.1", "1.2"])
def trt(request, monkeypatch):
    install_stand_ins(monkeypatch, request.param)
    yield reload_adapter()
    monkeypatch.undo()
    reload_adapter()  # back to the class without TensorRT-LLM


@pytest.fixture
def trt12(monkeypatch):
    install_stand_ins(monkeypatch, Drafter12)
    yield reload_adapter()
    monkeypatch.undo()
    reload_adapter()


def write_config(path, **data) -> str:
    path.with_suffix(".tmp").write_text(yaml.safe_dump(data))
    path.with_suffix(".tmp").replace(path)
    return str(path)


def ngram_config(tmp_path, **extra) -> str:
    return write_config(tmp_path / "c.yaml", proposer={"name": "ngram"}, num_speculative_tokens=3, **extra)


# ---- tests ----------------------------------------------------------------------------------------
def test_importing_never_needs_tensorrt_llm_and_using_it_names_the_package(tmp_path):
    code = "import sys, specplug_trtllm; assert 'tensorrt_llm' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    with pytest.raises(SpecplugError, match=r"needs TensorRT-LLM \(the tensorrt_llm package, 1.1 and 1.2"):
        specplug_trtllm.drafter.Drafter(ngram_config(tmp_path), SHAPE)
    with pytest.raises(SpecplugError, match="needs TensorRT-LLM"):
        specplug_trtllm.building.build_speculative_config(ngram_config(tmp_path), MODEL)


def test_both_constructor_forms_are_detected_by_signature(trt, tmp_path, caplog):
    drafter = trt(ngram_config(tmp_path), SHAPE, max_concurrency=16, draft_len_schedule={1: 4, 8: 2})
    if "max_draft_len" in drafter.init_kwargs:  # 1.2
        assert drafter.init_kwargs == {"max_draft_len": 4, "max_total_draft_tokens": 4, "max_concurrency": 16,
                                       "draft_len_schedule": {1: 4, 8: 2}}
    else:
        assert drafter.init_kwargs == {"max_concurrency": 16}
        assert "has no draft_len_schedule" in caplog.text


def test_generation_requests_get_the_proposers_drafts_and_context_requests_none(trt, tmp_path):
    drafter = trt(ngram_config(tmp_path), SHAPE)
    prefill, running = LlmRequest(1, [20, 21, 22]), LlmRequest(2, REPEATING)
    drafter.prepare_draft_tokens(ScheduledRequests([prefill], [running]))
    direct = drafter.strategy.proposer.propose([DraftRequest(2, REPEATING, len(REPEATING), 3)])[0]
    assert running.py_draft_tokens == direct.token_ids == [8, 9, 5]
    assert running.py_draft_logits is None  # a deterministic draft: token-matched
    assert prefill.py_draft_tokens == [] and drafter.rows.seen_length(1) is None


def test_limits_remaining_tokens_and_the_current_draft_length(trt12, tmp_path):
    drafter = trt12(ngram_config(tmp_path), SHAPE)
    short = LlmRequest(1, REPEATING, max_new_tokens=2)
    short.py_orig_prompt_len = short.py_prompt_len = len(REPEATING) - 0  # nothing generated yet
    drafter.prepare_draft_tokens(ScheduledRequests(generation=[short]))
    assert short.py_draft_tokens == [8]  # 2 new tokens allowed: 1 drafted + the target's own
    drafter.max_draft_len = 2  # what TensorRT-LLM 1.2 sets from draft_len_schedule as the batch grows
    other = LlmRequest(2, REPEATING)
    drafter.prepare_draft_tokens(ScheduledRequests(generation=[short, other]))
    assert other.py_draft_tokens == [8, 9]


def test_draft_probabilities_become_logits_that_round_trip(trt, tmp_path):
    drafter = trt(ngram_config(tmp_path), SHAPE)
    probs = torch.softmax(torch.randn(3, 50), -1)
    probs[:, 40:] = 0  # filtered out (top-k) by the proposer
    probs /= probs.sum(-1, keepdim=True)
    cases = [(SamplingParams(0.7, 40, 1.0), True), (SamplingParams(0.0), False), (SamplingParams(0.7, 0, 0.9), False)]
    for sampling, keeps in cases:
        request = LlmRequest(9, [1, 2])
        drafter._hand_over(request, sampling, Draft([1, 2, 3], probs))
        assert request.py_draft_tokens == [1, 2, 3]
        if not keeps:  # greedy, or top-p that TensorRT-LLM would apply a second time: verified one-hot
            assert request.py_draft_logits is None
            continue
        logits = request.py_draft_logits
        assert logits.shape == (3, 50) and logits.dtype == torch.float32
        assert torch.allclose(logits_to_probs(logits, sampling.temperature), probs, atol=1e-6)
        assert torch.isinf(logits[:, 40:]).all()


def test_padding_for_cuda_graphs_pads_tokens_and_logit_rows(trt12, tmp_path):
    drafter = trt12(ngram_config(tmp_path), SHAPE, cuda_graph_padding=True)
    running = LlmRequest(2, REPEATING)
    drafter.prepare_draft_tokens(ScheduledRequests(generation=[running]))
    assert running.py_draft_tokens == [8, 9, 5, 0]  # padded to the static 4 by TensorRT-LLM's method
    logits = pad_logits(probs_to_logits(torch.full((3, 5), 0.2), 1.0), 4)
    assert logits.shape == (4, 5) and logits[3, 0] == 0 and torch.isinf(logits[3, 1:]).all()


def test_accepted_counts_reach_the_proposer_and_adaptive_k(trt, tmp_path):
    drafter = trt(ngram_config(tmp_path, adaptive_k=True), SHAPE)
    running = LlmRequest(2, REPEATING)
    drafter.prepare_draft_tokens(ScheduledRequests(generation=[running]))
    running.tokens += [8, 1]  # the first draft token accepted, then the target's own 1
    running.py_num_accepted_draft_tokens = 1
    drafter.prepare_draft_tokens(ScheduledRequests(generation=[running]))
    assert [row.k for row in drafter.rows.matcher.rows()] == [2]  # one fewer after a rejection


def test_state_lives_while_scheduled_and_is_released_after(trt, tmp_path):
    path = write_config(tmp_path / "s.yaml", proposer={"name": "suffix", "max_cached_tokens": 2000},
                        num_speculative_tokens=4)
    drafter = trt(path, SHAPE)
    rng, live = np.random.default_rng(0), []
    for i in range(3000):
        live.append(LlmRequest(i, list(rng.integers(0, 50, 12)) + REPEATING))
        drafter.prepare_draft_tokens(ScheduledRequests(generation=live))
        for request in live:
            request.tokens.append(int(rng.integers(0, 50)))
        live = [r for r in live if rng.random() < 0.7][:8]  # finished requests leave the schedule
    drafter.prepare_draft_tokens(ScheduledRequests())
    proposer = drafter.strategy.proposer
    assert drafter.rows.matcher.rows() == [] and proposer.rows == {}
    assert proposer.cache.num_tokens <= 2000 and proposer.drafts_from["global"] > 0


def test_a_config_swap_applies_and_a_broken_one_keeps_the_old_strategy(trt, tmp_path, caplog):
    path = ngram_config(tmp_path)
    drafter = trt(path, SHAPE)
    running = LlmRequest(2, REPEATING)
    write_config(Path(path), proposer={"name": "none"}, num_speculative_tokens=3)
    drafter.prepare_draft_tokens(ScheduledRequests(generation=[running]))
    assert drafter.strategy.name == "none" and running.py_draft_tokens == []
    write_config(Path(path), proposer={"name": "no_such"})
    with caplog.at_level(logging.ERROR, "specplug.trtllm"):
        drafter.prepare_draft_tokens(ScheduledRequests(generation=[running]))
    assert drafter.strategy.name == "none" and "unknown proposer 'no_such'" in caplog.text
    write_config(Path(path), proposer={"name": "ngram"}, num_speculative_tokens=3)
    running.tokens += [8]
    drafter.prepare_draft_tokens(ScheduledRequests(generation=[running]))
    assert drafter.strategy.name == "ngram" and running.py_draft_tokens


def test_auto_times_tensorrt_llm_iterations_and_skips_those_with_context_requests(trt12, tmp_path):
    """``auto`` runs here as inside vLLM: an iteration's time is the gap between two calls; where a wide
    verify is dear and nothing is accepted it stops drafting. An iteration that also ran a context
    request is not taken as a verify's cost."""
    from specplug.hosting.clock import StepClock

    path = write_config(tmp_path / "auto.yaml", proposer={"name": "ngram"}, num_speculative_tokens=3,
                        adaptive_k="auto", serve={"auto": {"explore": 0.0}})
    drafter, now = trt12(path, SHAPE), [0.0]
    drafter.rows.clock = StepClock(lambda: now[0])
    running, widths, observed = LlmRequest(2, REPEATING), [], []
    policy = drafter.strategy.policy
    real_observe = policy.observe
    policy.observe = lambda *args: (observed.append(args[5]), real_observe(*args))  # args[5]: the step's seconds
    for step in range(30):
        context = [LlmRequest(100 + step, [1, 2, 3])] if step == 10 else []
        drafter.prepare_draft_tokens(ScheduledRequests(context, [running]))
        widths.append(1 + len(running.py_draft_tokens))
        now[0] += {1: 0.02, 2: 0.05, 3: 0.07, 4: 0.09}[widths[-1]] + (5.0 if context else 0.0)
        running.tokens.append(1)  # every draft rejected
    assert widths[-10:] == [1] * 10 and max(widths[:3]) > 1  # it tried, then stopped drafting
    assert len(observed) == 28 and max(observed) < 1.0  # the first call and the context iteration not used
    assert drafter.stats.of("ngram").auto_widths


def test_the_drafter_pickles_for_worker_processes(trt, tmp_path):
    drafter = trt(ngram_config(tmp_path), SHAPE, max_concurrency=4)
    copy = pickle.loads(pickle.dumps(drafter))
    assert type(copy) is type(drafter) and copy.strategy.name == "ngram" and copy.max_concurrency == 4
    running = LlmRequest(2, REPEATING)
    copy.prepare_draft_tokens(ScheduledRequests(generation=[running]))
    assert running.py_draft_tokens == [8, 9, 5]


def test_build_speculative_config_reads_the_trtllm_section(trt12, tmp_path):
    path = ngram_config(tmp_path, trtllm={"max_concurrency": 8, "draft_len_schedule": {1: 3, 4: 1}})
    speculative, kwargs = specplug_trtllm.building.build_speculative_config(path, MODEL, max_batch_size=4)
    assert speculative.max_draft_len == 3 and speculative.resource_manager is None
    assert speculative.drafter.init_kwargs["max_concurrency"] == 8
    assert speculative.drafter.init_kwargs["draft_len_schedule"] == {1: 3, 4: 1}
    assert kwargs == {"disable_overlap_scheduler": True, "max_batch_size": 4}


@pytest.mark.parametrize("section, message", [
    ({"max_concurrency": 0}, "trtllm.max_concurrency must be an integer >= 1 or null (got 0)"),
    ({"draft_len_schedule": {1: -1}}, "trtllm.draft_len_schedule must map batch sizes"),
    ({"max_concurency": 4}, "unknown config key 'trtllm.max_concurency' (did you mean 'max_concurrency'?)"),
])
def test_bad_trtllm_sections_are_one_line_errors(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_config(ngram_config(tmp_path, trtllm=section))


def test_one_proposer_object_drafts_alike_in_every_engine(trt, tmp_path, monkeypatch):
    """The same ngram object and token history: the embedded engine's DraftRequest, the vLLM adapter's
    row translation and the TensorRT-LLM adapter all hand back the same drafts."""
    from vllm.engine.arg_utils import EngineArgs

    from specplug_vllm import Proposer as VllmProposer

    path = ngram_config(tmp_path)
    drafter = trt(path, SHAPE)
    histories = [REPEATING, [11, 12, 13, 11, 12], [3, 4, 3, 4, 3]]
    embedded = drafter.strategy.proposer.propose([DraftRequest(i, h, len(h), 3) for i, h in enumerate(histories)])
    requests = [LlmRequest(i, h) for i, h in enumerate(histories)]
    drafter.prepare_draft_tokens(ScheduledRequests(generation=requests))
    monkeypatch.setenv("SPECPLUG_CONFIG", path)
    args = EngineArgs(model=MODEL, dtype="float32", max_model_len=128, max_num_seqs=4,
                      speculative_config={"method": "custom_class", "model": "specplug_vllm.Proposer",
                                          "num_speculative_tokens": 3})
    vllm = VllmProposer(args.create_engine_config())
    tokens = np.zeros((4, 128), dtype=np.int32)
    for i, h in enumerate(histories):
        tokens[i, : len(h)] = h
    counts = np.array([len(h) for h in histories] + [0], dtype=np.int32)
    in_vllm = vllm.propose([[h[-1]] for h in histories] + [[]], counts, tokens)
    assert [d.token_ids for d in embedded] == [r.py_draft_tokens for r in requests] == in_vllm[:3]
    assert in_vllm[0] == [8, 9, 5]


@pytest.mark.slow
def test_draft_model_drafts_alike_and_hands_over_logits_when_sampling(trt, tmp_path, monkeypatch):
    """A model proposer (draft_model, 2 of the target's layers): greedy drafts equal through the three
    engines' paths; a sampled request gets ``py_draft_logits`` that give back a top-k distribution."""
    from vllm.engine.arg_utils import EngineArgs

    from specplug import distill
    from specplug.models.loader import load_tokenizer
    from specplug_vllm import Proposer as VllmProposer

    draft_dir = tmp_path / "draft"
    distill.make_draft(load_config(None, ["max_model_len=256"]), draft_dir, num_layers=2, steps=0)
    path = write_config(tmp_path / "d.yaml", proposer={"name": "draft_model", "model": str(draft_dir)},
                        num_speculative_tokens=3)
    drafter = trt(path, SHAPE)
    history = load_tokenizer(MODEL).encode("The capital of France is Paris. The capital of Italy is")
    embedded = drafter.strategy.proposer.propose([DraftRequest("e", history, len(history), 3)])[0]
    greedy, sampled = LlmRequest(1, history), LlmRequest(2, history, sampling=SamplingConfig(0.8, 20, None, 5))
    drafter.prepare_draft_tokens(ScheduledRequests(generation=[greedy, sampled]))
    assert greedy.py_draft_tokens == embedded.token_ids and len(embedded.token_ids) == 3
    assert greedy.py_draft_logits is None
    logits = sampled.py_draft_logits
    assert logits.shape == (3, SHAPE.vocab_size) and logits.dtype == torch.float32
    assert (torch.isfinite(logits).sum(-1) <= 20).all()  # the proposer's top-k survives the hand-over
    probs = logits_to_probs(logits, 0.8)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    assert all(probs[i, t] > 0 for i, t in enumerate(sampled.py_draft_tokens))
    monkeypatch.setenv("SPECPLUG_CONFIG", path)
    args = EngineArgs(model=MODEL, dtype="float32", max_model_len=128, max_num_seqs=4,
                      speculative_config={"method": "custom_class", "model": "specplug_vllm.Proposer",
                                          "num_speculative_tokens": 3})
    tokens = np.zeros((4, 128), dtype=np.int32)
    tokens[0, : len(history)] = history
    in_vllm = VllmProposer(args.create_engine_config()).propose(
        [[history[-1]], [], [], []], np.array([len(history), 0, 0, 0], dtype=np.int32), tokens)
    assert in_vllm[0] == embedded.token_ids


@pytest.mark.trtllm
def test_real_tensorrt_llm_greedy_output_is_unchanged(tmp_path):
    """On a GPU machine with TensorRT-LLM: `pytest -m trtllm tests/test_trtllm_adapter.py`."""
    pytest.importorskip("tensorrt_llm")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT-LLM needs a CUDA GPU")
    from tensorrt_llm import LLM, SamplingParams as TrtSampling

    speculative, kwargs = specplug_trtllm.building.build_speculative_config(ngram_config(tmp_path), MODEL)
    prompts = ["def fibonacci(n):", "The capital of France is"]
    params = TrtSampling(max_tokens=48, temperature=0.0)
    plain = [o.outputs[0].token_ids for o in LLM(model=MODEL).generate(prompts, params)]
    spec = [o.outputs[0].token_ids for o in LLM(model=MODEL, speculative_config=speculative, **kwargs)
            .generate(prompts, params)]
    assert spec == plain


def test_an_eagle3_config_becomes_tensorrt_llms_own_eagle3_method_with_the_same_head(trt12, tmp_path):
    from specplug.models.eagle3 import Eagle3Head, HeadShape

    shape = HeadShape(64, 4, 2, 16, 128, 96, 32, (2, 15, 27), 1e-5, 10000.0, 256)
    Eagle3Head(shape, torch.zeros(32, dtype=torch.long)).save(tmp_path / "head")
    path = write_config(tmp_path / "c.yaml", proposer={"name": "eagle3", "head": str(tmp_path / "head")},
                        num_speculative_tokens=3)
    speculative, kwargs = specplug_trtllm.building.build_speculative_config(path, MODEL, max_batch_size=4)
    assert isinstance(speculative, Eagle3DecodingConfig)
    assert speculative.kwargs == {"max_draft_len": 3, "speculative_model": str(tmp_path / "head"),
                                  "eagle3_one_model": True, "eagle3_layers_to_capture": {1, 14, 26}}
    assert kwargs == {"max_batch_size": 4}
