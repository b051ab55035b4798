"""Graph-ready steps on the CPU: padded batch and width buckets with static buffers give exactly the
tokens of the exact-shape path and of a cache-free reference, through joins, leaves and rollbacks.

The tiny float64 model makes these run in seconds; the real-model tests cover fp32 exactness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from specplug.engine.engine import Engine, Request
from specplug.models.runner import StepRunner, bucket_for, buckets
from specplug.proposers.layerskip import layer_plan
from specplug.proposers.model_drafter import ModelDrafter
from specplug.proposers.ngram import NgramProposer
from specplug.proposers.none import NoProposer
from specplug.verifiers.rejection import RejectionSampler
from tests.test_engine_greedy import NoisyOracle, RecordingVerifier

PROMPTS = [[7, 3, 9, 7, 3, 9, 7, 3], [200, 1, 2], [11, 12, 13, 14, 11, 12, 13, 14, 11, 12, 13], [42],
           [5, 6, 5, 6, 5, 6], [90, 80, 70, 60, 50]]
LENGTHS = [24, 9, 30, 17, 5, 21]


@torch.inference_mode()
def reference_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    """Greedy decoding that recomputes the whole sequence each token (no cache kept across steps)."""
    tokens = list(prompt)
    for _ in range(max_new):
        ids = torch.tensor([tokens])
        logits = model(ids, torch.arange(len(tokens))[None], model.new_cache(1, len(tokens)), slice(0, 1),
                       torch.tensor([[len(tokens) - 1]]))
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):]


@pytest.fixture(scope="module")
def expected(tiny_model):
    return [reference_greedy(tiny_model, p, n) for p, n in zip(PROMPTS, LENGTHS)]


def run_engine(model, proposer, padded, batch, k=3, verifier=None, prompts=len(PROMPTS), **engine_options):
    engine = Engine(model, None, proposer, verifier or RejectionSampler(), k, batch, max_model_len=128,
                    padded_steps=padded, **engine_options)
    requests = [Request(i, p, n) for i, (p, n) in enumerate(zip(PROMPTS[:prompts], LENGTHS))]
    outputs = {out.request_id: out.row.token_ids[len(out.row.request.prompt_token_ids):]
               for out in engine.run(requests) if out.finish_reason}
    return [outputs[i] for i in range(prompts)], engine


def test_buckets_are_exact_or_powers_of_two():
    assert buckets(5, padded=False) == (1, 2, 3, 4, 5)
    assert buckets(5, padded=True) == (1, 2, 4, 8)
    assert bucket_for(3, (1, 2, 4, 8)) == 4 and bucket_for(9, (1, 2, 4, 8)) is None


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_plain_and_ngram_equal_the_cache_free_reference(tiny_model, expected, batch, padded):
    for proposer in (NoProposer(), NgramProposer(1, 3)):
        outputs, engine = run_engine(tiny_model, proposer, padded, batch)
        assert outputs == expected, f"{proposer.name}, batch {batch}, padded {padded}"
        assert engine.cache.lengths == [0] * engine.cache.slots  # every slot released


def test_padded_buckets_really_pad_and_use_spare_slots(tiny_model):
    _, engine = run_engine(tiny_model, NgramProposer(1, 3), padded=True, batch=3, k=5)
    assert engine.cache.slots == 4 and engine.runner.widths == (1, 2, 4, 8)
    shapes = {key[:2] for key in engine.runner.static}
    assert (4, 8) in shapes or (4, 4) in shapes  # 3 rows ran as 4, widths 5-6 as 8 (or 3 as 4)
    assert all(b in (1, 2, 4) and t in (1, 2, 4, 8) for b, t in shapes)


@pytest.mark.parametrize("padded", [False, True])
def test_many_rollbacks_stay_exact(tiny_model, expected, padded):
    verifier = RecordingVerifier()
    oracle = NoisyOracle(dict(enumerate(expected)), 0.3, tiny_model.shape.vocab_size, seed=1)
    outputs, _ = run_engine(tiny_model, oracle, padded, batch=3, k=5, verifier=verifier)
    assert outputs == expected
    assert {0, 5} <= verifier.accepted_lengths and len(verifier.accepted_lengths) >= 4


def test_model_drafter_padded_steps_equal_exact_steps(tiny_model, expected):
    """A layerskip drafter (one-token steps over every live slot) through padded buckets."""
    plan = layer_plan(tiny_model.shape.num_layers, skip_mlp=[1])
    results = {}
    for padded in (False, True):
        drafter = ModelDrafter("layerskip", tiny_model, plan, 3, 128, 4)
        drafter.runner = StepRunner.create(tiny_model, 3, 5, 129, plan, padded=padded)
        drafter.cache = drafter.runner.cache
        verifier = RecordingVerifier()
        results[padded], _ = run_engine(tiny_model, drafter, padded, batch=3, k=4, verifier=verifier)
        assert len(verifier.accepted_lengths) >= 2  # drafts both accepted and rejected
        # whole-prompt catch-ups ran outside the buckets and left no buffers behind
        assert all(width in drafter.runner.widths for _, width, _, _ in drafter.runner.static)
    assert results[False] == results[True] == expected


def test_no_device_value_is_read_back_inside_a_step(tiny_model, monkeypatch):
    """The runner gives the forward its extent: Tensor.item/__bool__/__int__ are never called."""
    engine = Engine(tiny_model, None, NgramProposer(1, 3), RejectionSampler(), 3, 2, max_model_len=64)
    engine.add_request(Request(0, PROMPTS[0], 8))
    engine.step()  # prefill (outside the graph-ready path)
    rows = engine.rows
    calls = []
    for name in ("item", "__bool__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: calls.append(_n) or _o(self, *a))
    engine.runner.run([[rows[0].token_ids[-1], 7, 3]], [engine.cache.lengths[0]])
    monkeypatch.undo()
    assert calls == []


def test_compiled_steps_equal_the_reference(tiny_model, expected):
    """compile: on (torch.compile per bucket, dynamic extent): same tokens, one graph per width bucket."""
    outputs, engine = run_engine(tiny_model, NgramProposer(1, 3), None, batch=1, k=1, prompts=2, compiled=True)
    assert outputs == expected[:2]
    assert engine.runner.forward is not tiny_model.forward and engine.runner.widths == (1, 2)
    kept = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert kept.is_dir() and any(kept.iterdir()), "inductor wrote what it compiled under the kept directory"


def test_compiled_code_is_kept_per_cpu_and_torch_under_specplug_s_cache(monkeypatch, tmp_path):
    from specplug.models import runner

    monkeypatch.setenv("SPECPLUG_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    here = runner.compiled_code_dir()
    assert here.parent == tmp_path / "compiled"
    runner.keep_compiled_code()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(here)
    monkeypatch.setattr(runner, "cpu_model", lambda: "another CPU")
    assert runner.compiled_code_dir() != here
    monkeypatch.undo()
    monkeypatch.setenv("SPECPLUG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert runner.compiled_code_dir() != here
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/where/the/user/wants/it")
    runner.keep_compiled_code()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/where/the/user/wants/it"


def test_an_unreadable_compiled_code_entry_is_one_warning_not_a_traceback(monkeypatch, tmp_path, capsys):
    """inductor skips an entry it cannot unpickle and compiles it again (measured: a cache of random bytes
    gave the same tokens, docs/benchmarks.md); what it logs for that becomes one warning."""
    import logging

    from specplug.models import runner

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    codecache = logging.getLogger("torch._inductor.codecache")
    for old in [f for f in codecache.filters if isinstance(f, runner._UnreadableEntries)]:
        codecache.removeFilter(old)  # a fresh one, that has said nothing yet
    runner.keep_compiled_code()
    runner.keep_compiled_code()  # idempotent: one filter
    assert sum(isinstance(f, runner._UnreadableEntries) for f in codecache.filters) == 1
    with pytest.warns(UserWarning, match="compiled-code cache entry under .* could not be read") as caught:
        for _ in range(3):
            try:
                raise ValueError("invalid load key")
            except ValueError:
                codecache.warning("fx graph cache unable to load compiled graph", exc_info=True)
    assert len(caught) == 1 and "Traceback" not in capsys.readouterr().err
