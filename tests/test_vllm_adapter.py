"""The vLLM adapter's translation layer, on a real ``VllmConfig`` without starting an engine.

``propose`` is driven with the arrays vLLM's model runner passes (rows that move, arrive and leave),
and its drafts are compared with what the same specplug proposer drafts when called directly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

pytest.importorskip("vllm")

from specplug.models.loader import resolve_model  # noqa: E402
from specplug.errors import SpecplugError  # noqa: E402
from specplug.metadata import DraftRequest  # noqa: E402
from specplug.proposers.ngram import NgramProposer  # noqa: E402
from specplug_vllm import Proposer, check_vllm_version, plugin  # noqa: E402
from specplug.hosting.token_rows import RowMatcher  # noqa: E402
from specplug.config import ConfigWatcher  # noqa: E402

BOUND = 4  # vLLM's num_speculative_tokens in these tests
MAX_LEN = 64


@pytest.fixture(scope="module")
def vllm_config():
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(model=str(resolve_model("smollm2-135m")), dtype="float32", max_model_len=MAX_LEN,
                      max_num_seqs=4, speculative_config={"method": "custom_class", "model": "specplug_vllm.Proposer",
                                                          "num_speculative_tokens": BOUND})
    return args.create_engine_config()


def write_config(path, **data) -> str:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(data, f)
    os.replace(tmp, path)  # atomic, as a deployment should write it
    return str(path)


@pytest.fixture
def proposer(vllm_config, tmp_path, monkeypatch):
    path = write_config(tmp_path / "specplug.yaml", proposer={"name": "ngram"}, num_speculative_tokens=3)
    monkeypatch.setenv("SPECPLUG_CONFIG", path)
    monkeypatch.delenv("SPECPLUG_STATS_FILE", raising=False)
    return Proposer(vllm_config)


class Batch:
    """vLLM's view of a batch: a token array [max_num_seqs, max_model_len] and per-row counts."""

    def __init__(self):
        self.tokens = np.zeros((4, MAX_LEN), dtype=np.int32)
        self.counts = np.zeros(4, dtype=np.int32)

    def set(self, row: int, ids: list[int]) -> None:
        self.tokens[row, : len(ids)] = ids
        self.tokens[row, len(ids):] = 7  # stale drafts beyond the count must never be read
        self.counts[row] = len(ids)

    def propose(self, proposer: Proposer, sampled: list[list[int]]) -> list[list[int]]:
        return proposer.propose(sampled, self.counts, self.tokens, slot_mappings=None)


REPEATING = [5, 6, 8, 9, 5, 6, 8, 9, 5, 6]  # ngram drafts [8, 9, 5] after it
OTHER = [11, 12, 13, 11, 12]  # ngram drafts [13, 11, 12]


def test_drafts_are_the_specplug_proposers_own(proposer):
    batch = Batch()
    batch.set(0, REPEATING)
    batch.set(1, OTHER)
    batch.set(2, [20, 21, 22])
    drafts = batch.propose(proposer, [[6], [12], [], []])  # row 2 is still in prefill: no draft
    direct = NgramProposer().propose([DraftRequest(0, REPEATING, 9, 3), DraftRequest(1, OTHER, 4, 3)])
    assert drafts == [direct[0].token_ids, direct[1].token_ids, [], []]
    assert drafts[0] == [8, 9, 5] and drafts[1] == [13, 11, 12]


def test_rows_that_move_keep_their_sequence_and_gone_ones_are_released(proposer):
    batch = Batch()
    batch.set(0, [1, 2, 3])
    batch.set(1, REPEATING)
    batch.set(2, OTHER)
    batch.propose(proposer, [[3], [6], [12], []])
    tokens = proposer.rows.matcher.tokens
    ids = {tuple(tokens[r.seq_id][:3]): r.seq_id for r in proposer.rows.matcher.rows()}
    # row 0 finished: vLLM moves its last row (2) into the hole; row 1 accepted its 3 drafts + a bonus
    batch.set(0, OTHER + [13])
    batch.set(1, REPEATING + [8, 9, 5, 6])
    batch.counts[2] = 0
    drafts = batch.propose(proposer, [[13], [8, 9, 5, 6], [], []])
    now = {row: r.seq_id for row, r in proposer.rows.matcher.by_index.items()}
    assert now == {0: ids[tuple(OTHER[:3])], 1: ids[tuple(REPEATING[:3])]}
    assert set(proposer.strategy.proposer.indexes) == set(now.values())  # the finished row was released
    assert drafts[1] == [8, 9, 5]
    stats = proposer.stats.of("ngram")
    assert (stats.num_draft_tokens, stats.num_accepted_tokens) == (6, 3)  # [8, 9, 5] all kept; [13, 11, 12] not
    assert stats.num_accepted_tokens_per_pos == [1, 1, 1] and stats.num_drafts == 2


def test_identical_rows_each_get_their_own_sequence(proposer):
    batch = Batch()
    for row in range(3):
        batch.set(row, REPEATING)
    drafts = batch.propose(proposer, [[6], [6], [6], []])
    assert drafts[:3] == [[8, 9, 5]] * 3
    assert len({r.seq_id for r in proposer.rows.matcher.rows()}) == 3


def test_matcher_matches_by_token_prefix_not_by_index(proposer):
    from specplug.hosting.rows import Row

    matcher, strategy = RowMatcher(), proposer.strategy
    new = lambda index, seq_id, tokens: Row(seq_id=seq_id, strategy=strategy, num_prompt_tokens=len(tokens) - 1)  # noqa: E731
    a, b = np.array([1, 2, 3]), np.array([4, 5, 6])
    first, gone, fresh = matcher.update({0: a, 1: b}, None, new)
    assert gone == [] and fresh and first[0].num_prompt_tokens == 2
    second, gone, fresh = matcher.update({0: np.array([4, 5, 6, 7]), 1: np.array([9, 9])}, None, new)
    assert second[0] is first[1]  # b continued, now at row 0
    assert second[1].seq_id not in (first[0].seq_id, first[1].seq_id) and fresh  # a new request
    assert gone == [first[0]]
    third, gone, fresh = matcher.update({0: np.array([9, 9, 1])}, ["req-7"], new)
    assert third[0].seq_id == "req-7" and fresh  # with request ids, a row is its request
    assert sorted(r.seq_id for r in gone) == sorted([second[0].seq_id, second[1].seq_id])


def test_config_swap_applies_at_the_next_step(proposer, tmp_path):
    batch = Batch()
    batch.set(0, REPEATING)
    assert batch.propose(proposer, [[6], [], [], []])[0] == [8, 9, 5]
    write_config(proposer.config_path, proposer={"name": "none"})
    batch.set(0, REPEATING + [8])
    assert batch.propose(proposer, [[8], [], [], []])[0] == []
    assert proposer.strategy.name == "none"
    assert proposer.stats.swaps[-1] | {"time": 0} == {"from": "ngram", "to": "none", "config": proposer.config_path,
                                                      "in_flight": 1, "time": 0}
    assert [r.strategy.name for r in proposer.rows.matcher.rows()] == ["none"]  # the row in flight moved over


@pytest.mark.parametrize("config, message", [
    ({"proposer": {"name": "no_such"}}, "unknown proposer 'no_such'; known proposers: draft_model, eagle3, layerskip, ngram, none, suffix"),
    ({"proposer": {"name": "ngram"}, "num_speculative_tokens": 6}, "above the engine's bound (4, vLLM's"),
    ({"proposer": {"name": "ngram", "min_n": 9, "max_n": 2}}, "min_n (9) must not exceed max_n (2)"),
])
def test_a_broken_new_config_is_rejected_and_the_old_proposer_keeps_running(proposer, config, message):
    batch = Batch()
    batch.set(0, REPEATING)
    write_config(proposer.config_path, **config)
    assert batch.propose(proposer, [[6], [], [], []])[0] == [8, 9, 5]
    assert proposer.strategy.name == "ngram"
    assert message in proposer.stats.rejected[-1]["error"]
    assert proposer.stats.swaps == []


@pytest.mark.parametrize("config, message", [
    ({"proposer": {"name": "no_such"}}, "unknown proposer 'no_such'; known proposers: draft_model, eagle3, layerskip, ngram, none, suffix"),
    ({"num_speculative_tokens": 5}, "has num_speculative_tokens 5, above the engine's bound"),
    ({"proposer": {"name": "draft_model", "model": "/nonexistent/draft"}}, "specplug make-draft"),
])
def test_a_bad_config_at_start_names_the_problem(vllm_config, tmp_path, monkeypatch, caplog, config, message):
    monkeypatch.setenv("SPECPLUG_CONFIG", write_config(tmp_path / "bad.yaml", **config))
    with pytest.raises(SpecplugError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Proposer(vllm_config)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("specplug: cannot start: ") and message in errors[0]


def test_version_range_is_checked_with_a_clear_message():
    check_vllm_version("0.32.0")
    check_vllm_version("0.32.1rc1")
    for version in ("0.31.9", "0.33.0", "1.0.0"):
        with pytest.raises(SpecplugError, match=r"supports vLLM >=0.32,<0.33, found " + version):
            check_vllm_version(version)


def test_general_plugin_loads_specplug_plugins_once(monkeypatch):
    monkeypatch.setattr(plugin, "_registered", False)
    plugin.registry.cache_clear()
    plugin.register()
    first = plugin.registry()
    plugin.register()
    assert plugin.registry() is first and "ngram" in first.names("proposer")


def test_config_watcher_sees_replaced_and_removed_files(tmp_path):
    path = write_config(tmp_path / "c.yaml", proposer={"name": "ngram"})
    watcher = ConfigWatcher(path)
    assert not watcher.changed()
    write_config(path, proposer={"name": "ngram"})
    assert watcher.changed() and not watcher.changed()
    os.remove(path)
    assert watcher.changed()


def test_adaptive_k_moves_each_rows_budget_within_the_configs_k(vllm_config, tmp_path, monkeypatch):
    path = write_config(tmp_path / "a.yaml", proposer={"name": "ngram"}, num_speculative_tokens=3, adaptive_k=True)
    monkeypatch.setenv("SPECPLUG_CONFIG", path)
    proposer, batch = Proposer(vllm_config), Batch()
    batch.set(0, REPEATING)
    assert batch.propose(proposer, [[6], [], [], []])[0] == [8, 9, 5]
    batch.set(0, REPEATING + [1])  # vLLM rejected the first draft token and sampled 1 instead
    batch.propose(proposer, [[1], [], [], []])
    assert proposer.rows.matcher.by_index[0].k == 2
    batch.set(0, REPEATING + [1, 5])  # nothing was drafted after the unseen 1
    assert batch.propose(proposer, [[5], [], [], []])[0] == [6, 1]  # k = 2 now
    batch.set(0, REPEATING + [1, 5, 6, 1, 5])  # both accepted, plus a bonus token
    batch.propose(proposer, [[6, 1, 5], [], [], []])
    assert proposer.rows.matcher.by_index[0].k == 3  # back up, never above the config's k


class Runner:
    """What the adapter reads of vLLM's model runner (``runner.requests_of``): ``input_batch.req_ids``
    and ``requests[id].sampling_params.extra_args``."""

    def __init__(self, named: dict[str, str | None]):
        from types import SimpleNamespace

        self.input_batch = SimpleNamespace(req_ids=list(named))
        self.requests = {rid: SimpleNamespace(sampling_params=SimpleNamespace(
            extra_args={"strategy": name} if name else None)) for rid, name in named.items()}


def test_each_request_names_its_strategy_through_extra_args(vllm_config, tmp_path, monkeypatch, caplog):
    path = write_config(tmp_path / "n.yaml", proposer={"name": "ngram"}, num_speculative_tokens=3,
                        serve={"strategies": {"short": {"proposer": "ngram", "num_speculative_tokens": 1}}})
    monkeypatch.setenv("SPECPLUG_CONFIG", path)
    proposer, batch = Proposer(vllm_config), Batch()
    for row in range(4):
        batch.set(row, REPEATING)
    proposer.runner = Runner({"a": None, "b": "none", "c": "short", "d": "nope"})
    drafts = batch.propose(proposer, [[6], [6], [6], [6]])
    assert drafts == [[8, 9, 5], [], [8], [8, 9, 5]]  # default, none, short, unknown (the default)
    assert "named strategy 'nope'" in caplog.text and "use the default, 'ngram'" in caplog.text
    assert {r.seq_id: r.strategy.name for r in proposer.rows.matcher.rows()} == {
        "a": "ngram", "b": "none", "c": "short", "d": "ngram"}
    proposer.runner = Runner({"c": "short", "a": None})  # rows moved and two left: ids keep them apart
    batch.set(0, REPEATING + [8])
    batch.set(1, REPEATING + [8, 9, 5, 6])
    assert batch.propose(proposer, [[8], [8, 9, 5, 6], [], []])[:2] == [[9], [8, 9, 5]]


def test_the_runner_wrap_hands_the_runner_to_a_specplug_drafter_only(proposer):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from specplug_vllm import runner as runner_view

    assert runner_view.install() and runner_view.install()  # idempotent
    wrapped = GPUModelRunner.propose_draft_token_ids
    assert wrapped.__specplug__ and wrapped.__wrapped__.__name__ == "propose_draft_token_ids"

    class FakeRunner:
        drafter = proposer
        propose_draft_token_ids = wrapped

    fake = FakeRunner()
    with pytest.raises(AttributeError):  # the original body runs on after the hand-over (and needs a real runner)
        fake.propose_draft_token_ids(None, [], None, None, None, None, None, None, None)
    assert proposer.runner is fake


def test_a_step_without_drafts_samples_with_vllms_plain_sampler(proposer):
    """The runner's ``_sample`` wrap: where no row carries a draft, vLLM's plain sampler (as without
    speculation); where one does, or the drafter is not specplug's, vLLM's rejection sampler."""
    from types import SimpleNamespace

    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from specplug_vllm import runner as runner_view

    assert runner_view.install()
    assert GPUModelRunner._sample.__specplug__

    class FakeRunner:
        _sample = GPUModelRunner._sample
        use_async_scheduling = False
        input_batch = SimpleNamespace(sampling_metadata="metadata", update_async_output_token_ids=lambda: None)

        def __init__(self, drafter):
            self.drafter, self.used = drafter, []
            self.sampler = lambda logits, sampling_metadata: self.used.append("plain")
            self.rejection_sampler = lambda *args: self.used.append("rejection")
            self._get_spec_decode_draft_probs = lambda metadata: None

    def sampled_with(drafter, max_spec_len: int) -> list[str]:
        runner = FakeRunner(drafter)
        runner._sample("logits", SimpleNamespace(max_spec_len=max_spec_len))
        return runner.used

    assert sampled_with(proposer, 0) == ["plain"]
    assert sampled_with(proposer, 2) == ["rejection"]
    assert sampled_with(object(), 0) == ["rejection"]  # vLLM's own drafters: untouched


def test_auto_learns_each_steps_cost_from_the_time_between_calls(vllm_config, tmp_path, monkeypatch):
    """Inside vLLM ``auto`` times vLLM's steps from the gaps between drafter calls: where a wide verify
    costs far more than a narrow one and nothing is accepted it stops drafting; where verifying is free
    and everything is accepted it drafts all it may."""
    from specplug.hosting.clock import StepClock

    def run(seconds_by_width, accepts: bool, steps: int) -> list[int]:
        path = write_config(tmp_path / "auto.yaml", proposer={"name": "ngram"}, num_speculative_tokens=3,
                            adaptive_k="auto", serve={"auto": {"explore": 0.0}})
        monkeypatch.setenv("SPECPLUG_CONFIG", path)
        proposer, batch, now = Proposer(vllm_config), Batch(), [0.0]
        proposer.rows.clock = StepClock(lambda: now[0])
        tokens, sampled, widths = list(REPEATING), [6], []
        for _ in range(steps):
            batch.set(0, tokens)
            draft = batch.propose(proposer, [sampled, [], [], []])[0]
            widths.append(1 + len(draft))
            now[0] += seconds_by_width[1 + len(draft)]  # vLLM's step: verify the draft
            sampled = (draft if accepts else []) + [REPEATING[(len(tokens) + len(draft)) % 4] if accepts else 1]
            tokens = tokens + sampled
        proposer.stats.report(force=True)  # step costs are read when the counters are reported
        counters = proposer.stats.of("ngram")
        assert counters.auto_widths  # what it chose is counted (the default: adaptive_k auto)
        # what it believes a step of one row costs, by tokens verified: what such steps took here
        assert counters.auto_step_ms and all(ms == pytest.approx(1000 * seconds_by_width[int(tokens)])
                                             for tokens, ms in counters.auto_step_ms.items())
        return widths

    assert run({1: 0.02, 2: 0.05, 3: 0.07, 4: 0.09}, accepts=False, steps=30)[-10:] == [1] * 10
    assert run({1: 0.02, 2: 0.02, 3: 0.02, 4: 0.02}, accepts=True, steps=11)[-5:] == [4] * 5


def test_stats_file_holds_the_strategies_swaps_and_rejections(vllm_config, tmp_path, monkeypatch):
    path = write_config(tmp_path / "s.yaml", proposer={"name": "ngram"}, num_speculative_tokens=3)
    monkeypatch.setenv("SPECPLUG_CONFIG", path)
    monkeypatch.setenv("SPECPLUG_STATS_FILE", str(tmp_path / "stats-{pid}.json"))
    monkeypatch.setenv("SPECPLUG_STATS_INTERVAL", "0")
    proposer, batch = Proposer(vllm_config), Batch()
    batch.set(0, REPEATING)
    batch.propose(proposer, [[6], [], [], []])
    write_config(path, proposer={"name": "none"})
    batch.set(0, REPEATING + [8, 9, 5, 6])
    batch.propose(proposer, [[8, 9, 5, 6], [], [], []])
    write_config(path, proposer={"name": "no_such"})
    batch.set(0, REPEATING + [8, 9, 5, 6, 8])
    batch.propose(proposer, [[8], [], [], []])
    stats = json.loads((tmp_path / f"stats-{os.getpid()}.json").read_text())
    assert stats["strategies"]["ngram"] == {
        "num_drafts": 1, "num_draft_tokens": 3, "num_accepted_tokens": 3, "num_accepted_tokens_per_pos": [1, 1, 1],
        "auto_widths": {}, "auto_step_ms": {}, "acceptance": 1.0}
    assert stats["default"] == "none" and stats["swaps"][0]["to"] == "none" and stats["steps"] == 3
    assert "unknown proposer 'no_such'" in stats["rejected"][0]["error"]
