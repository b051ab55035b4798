"""Fault isolation in the engine loop: a failing plugin or row never takes the other rows with it.

The tiny float64 model runs these in seconds; every surviving row must equal plain greedy decoding."""

from __future__ import annotations

import logging

import pytest
import torch

from specplug.engine.engine import Engine, Request
from specplug.hosting.strategy import Strategy
from specplug.metadata import Draft, SamplingParams
from specplug.proposers.ngram import NgramProposer
from specplug.proposers.none import NoProposer
from specplug.verifiers.rejection import RejectionSampler
from tests.test_step_runner import LENGTHS, PROMPTS, reference_greedy


@pytest.fixture(scope="module")
def expected(tiny_model):
    return [reference_greedy(tiny_model, p, n) for p, n in zip(PROMPTS, LENGTHS)]


class Flaky(NgramProposer):
    """n-gram drafts, but one hook raises (or drafts garbage) from its ``after``-th call on."""

    def __init__(self, hook: str, after: int = 2, garbage: bool = False):
        super().__init__(min_n=1, max_n=3)
        self.hook, self.after, self.garbage, self.calls = hook, after, garbage, 0

    def _maybe_fail(self, hook):
        if hook == self.hook:
            self.calls += 1
            if self.calls >= self.after and not self.garbage:
                raise RuntimeError(f"{hook} exploded")

    def propose(self, requests):
        self._maybe_fail("propose")
        drafts = super().propose(requests)
        if self.garbage and self.calls >= self.after:
            return [Draft([10**6] * r.max_draft_tokens) for r in requests]  # outside the vocabulary
        return drafts

    def on_verified(self, outcomes):
        self._maybe_fail("on_verified")
        super().on_verified(outcomes)

    def release(self, seq_id):
        self._maybe_fail("release")
        super().release(seq_id)


def run(engine, requests):
    finished = {out.request_id: out for out in engine.run(requests) if out.finish_reason}
    return {i: (out.finish_reason, out.row.token_ids[len(out.row.request.prompt_token_ids):])
            for i, out in finished.items()}


def engine_for(model, proposer, batch=4, **options):
    return Engine(model, None, proposer, options.pop("verifier", RejectionSampler()), 3, batch, max_model_len=128,
                  **options)


@pytest.mark.parametrize("hook,garbage", [("propose", False), ("propose", True), ("on_verified", False),
                                          ("release", False)])
def test_a_failing_proposer_leaves_its_rows_decoding_plainly(tiny_model, expected, caplog, hook, garbage):
    """Its rows go on without drafts (lossless); the fault is counted and logged once for the strategy."""
    flaky = Flaky(hook, garbage=garbage)
    engine = engine_for(tiny_model, NoProposer())
    strategy = Strategy("flaky", flaky, 3)
    requests = [Request(i, p, n, strategy=strategy if i % 2 else None)
                for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS))]
    with caplog.at_level(logging.ERROR, logger="specplug.engine"):
        results = run(engine, requests)
    assert {i: tokens for i, (_, tokens) in results.items()} == dict(enumerate(expected))
    assert all(reason in ("length", "stop") for reason, _ in results.values())
    stage = "release" if hook == "release" else hook
    assert engine.faults.counts[("flaky", stage)] >= 1
    logged = [r for r in caplog.records if "strategy 'flaky'" in r.getMessage()]
    assert len(logged) == 1 and (garbage or f"{hook} exploded" in logged[0].getMessage())
    assert not engine.rows and engine.cache.lengths == [0] * len(engine.cache.lengths)


def test_rows_of_a_proposer_that_failed_draft_no_more(tiny_model):
    flaky = Flaky("propose", after=1)
    engine = engine_for(tiny_model, flaky, batch=2)
    outputs = list(engine.run([Request(0, PROMPTS[0], 20)]))
    assert flaky.calls == 1 and sum(out.num_draft for out in outputs) == 0


class PickyVerifier(RejectionSampler):
    """Raises for any batch holding a row sampled with top_k 7 (a stand-in for one row's bad values)."""

    def verify(self, batch):
        if any(s.top_k == 7 for s in batch.sampling):
            raise ValueError("cannot verify top_k 7")
        return super().verify(batch)


def test_a_row_whose_verification_raises_fails_alone(tiny_model, expected, caplog):
    engine = engine_for(tiny_model, NgramProposer(), verifier=PickyVerifier())
    bad = SamplingParams(temperature=0.0, top_k=7)
    requests = [Request(i, p, n, bad if i == 2 else SamplingParams()) for i, (p, n) in
                enumerate(zip(PROMPTS, LENGTHS))]
    with caplog.at_level(logging.ERROR, logger="specplug.engine"):
        results = run(engine, requests)
    assert results[2][0] == "error"
    assert {i: r[1] for i, r in results.items() if i != 2} == {i: e for i, e in enumerate(expected) if i != 2}
    assert any("request 2 failed: verification failed (ValueError: cannot verify top_k 7)" in r.getMessage()
               for r in caplog.records)


class ExplodingTokenizer:
    """decode raises once a given token shows up in the text it decodes (a broken stop-string check)."""

    def __init__(self, poison: int):
        self.poison = poison

    def decode(self, token_ids, **kwargs):
        if self.poison in token_ids:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte")
        return " ".join(map(str, token_ids))


def test_a_stop_check_that_raises_fails_only_its_row(tiny_model, expected):
    poison = expected[0][3]
    engine = Engine(tiny_model, ExplodingTokenizer(poison), NgramProposer(), RejectionSampler(), 3, 4,
                    max_model_len=128)
    requests = [Request(i, p, n, stop=("zzz",) if i == 0 else ()) for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS))]
    results = run(engine, requests)
    assert results[0][0] == "error" and engine.rows == []
    assert {i: r[1] for i, r in results.items() if i} == {i: e for i, e in enumerate(expected) if i}


def test_a_failed_forward_fails_its_rows_and_the_engine_comes_back_clean(tiny_model, expected, monkeypatch):
    engine = engine_for(tiny_model, NgramProposer())
    real_run, calls = engine.runner.run, []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "run", failing_once)
    results = run(engine, [Request(i, p, n) for i, (p, n) in enumerate(zip(PROMPTS[:4], LENGTHS))])
    assert [r[0] for r in results.values()] == ["error"] * 4
    assert not engine.rows and not engine.waiting and engine.cache.lengths == [0] * len(engine.cache.lengths)
    again = run(engine, [Request(i, p, n) for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS))])
    assert {i: r[1] for i, r in again.items()} == dict(enumerate(expected))


@pytest.mark.parametrize("temperature", [1e-300, 1e-38, 1e-8, 9.99e-6])
def test_a_temperature_below_the_greedy_epsilon_is_greedy(tiny_model, expected, temperature):
    assert SamplingParams(temperature).greedy and not SamplingParams(1e-5).greedy
    engine = engine_for(tiny_model, NgramProposer())
    results = run(engine, [Request(i, p, n, SamplingParams(temperature, seed=1))
                           for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS))])
    assert {i: r[1] for i, r in results.items()} == dict(enumerate(expected))


@pytest.mark.parametrize("temperature", [1e-5, 1e-3, 1.0, 1e4, 1e30, 1e300, 1.7e308])
@pytest.mark.parametrize("top_p", [5e-324, 1e-9, 0.5, 1.0])
def test_sampling_is_finite_for_every_value_the_api_accepts(tiny_model, temperature, top_p):
    engine = engine_for(tiny_model, NgramProposer())
    sampling = SamplingParams(temperature, top_k=0, top_p=top_p, seed=3)
    results = run(engine, [Request(i, p, 6, sampling) for i, p in enumerate(PROMPTS[:4])])
    assert all(reason == "length" and len(tokens) == 6 and all(0 <= t < 256 for t in tokens)
               for reason, tokens in results.values())
    if top_p < 1e-8:  # top-p keeps only the most likely token: greedy, whatever the temperature
        assert all(tokens == reference_greedy(tiny_model, PROMPTS[i], 6) for i, (_, tokens) in results.items())


def test_release_failure_is_counted_but_frees_the_slot(tiny_model):
    engine = engine_for(tiny_model, Flaky("release", after=1), batch=1)
    torch.manual_seed(0)
    run(engine, [Request(0, PROMPTS[0], 5), Request(1, PROMPTS[1], 5)])
    assert engine.faults.counts[(engine.strategy.name, "release")] == 2 and not engine.rows


def test_auto_beside_a_wider_strategy_and_a_policy_that_raises(tiny_model, expected):
    """auto (k 3) next to rows of a k 5 strategy chooses within its own widths; a policy that raises
    leaves its rows decoding plainly."""
    from specplug.hosting.auto import AutoDraftLength

    class Broken(AutoDraftLength):
        def plan(self, rows, batch_size, floor_width):
            raise ZeroDivisionError("no estimate")

    prior = {1: 1.0, 8: 1.2, 64: 4.0}
    engine = Engine(tiny_model, None, NoProposer(), RejectionSampler(), 5, 6, max_model_len=128)
    wide = Strategy("wide", NgramProposer(), 5)
    auto = Strategy("auto", NgramProposer(), 3, policy=AutoDraftLength(3, prior, explore=0.0))
    broken = Strategy("broken", NgramProposer(), 3, policy=Broken(3, prior))
    chosen = [wide, auto, broken]
    results = run(engine, [Request(i, p, n, strategy=chosen[i % 3]) for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS))])
    assert {i: r[1] for i, r in results.items()} == dict(enumerate(expected))
    assert engine.faults.counts == {("broken", "policy"): 1}  # once: then its rows decode plainly
