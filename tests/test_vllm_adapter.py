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
from specplug_vllm.rows import RowTracker  # noqa: E402
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
    ids = {tuple(t.tokens[:3]): t.seq_id for t in proposer.rows.tracker.tracked()}
    # row 0 finished: vLLM moves its last row (2) into the hole; row 1 accepted its 3 drafts + a bonus
    batch.set(0, OTHER + [13])
    batch.set(1, REPEATING + [8, 9, 5, 6])
    batch.counts[2] = 0
    drafts = batch.propose(proposer, [[13], [8, 9, 5, 6], [], []])
    now = {row: t.seq_id for row, t in proposer.rows.tracker.by_row.items()}
    assert now == {0: ids[tuple(OTHER[:3])], 1: ids[tuple(REPEATING[:3])]}
    assert set(proposer.strategy.proposer.indexes) == set(now.values())  # the finished row was released
    assert drafts[1] == [8, 9, 5]
    stats = proposer.stats.current
    assert (stats.drafted, stats.accepted) == (6, 3)  # [8, 9, 5] fully accepted; [13, 11, 12] rejected
    assert stats.accepted_by_position == [1, 1, 1]


def test_identical_rows_each_get_their_own_sequence(proposer):
    batch = Batch()
    for row in range(3):
        batch.set(row, REPEATING)
    drafts = batch.propose(proposer, [[6], [6], [6], []])
    assert drafts[:3] == [[8, 9, 5]] * 3
    assert len({t.seq_id for t in proposer.rows.tracker.tracked()}) == 3


def test_tracker_matches_by_token_prefix_not_by_index():
    tracker = RowTracker()
    a, b = np.array([1, 2, 3]), np.array([4, 5, 6])
    first, gone = tracker.update({0: a, 1: b}, {0: 1, 1: 1}, k=3)
    assert gone == [] and first[0].num_prompt_tokens == 2
    second, gone = tracker.update({0: np.array([4, 5, 6, 7]), 1: np.array([9, 9])}, {0: 1, 1: 1}, k=3)
    assert second[0].seq_id == first[1].seq_id  # b continued, now at row 0
    assert second[1].seq_id not in (first[0].seq_id, first[1].seq_id)  # a new request
    assert [t.seq_id for t in gone] == [first[0].seq_id]


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


@pytest.mark.parametrize("config, message", [
    ({"proposer": {"name": "no_such"}}, "unknown proposer 'no_such'; known proposers: draft_model, layerskip, ngram, none, suffix"),
    ({"proposer": {"name": "ngram"}, "num_speculative_tokens": 6}, "above vLLM's speculative_config"),
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
    ({"proposer": {"name": "no_such"}}, "unknown proposer 'no_such'; known proposers: draft_model, layerskip, ngram, none, suffix"),
    ({"num_speculative_tokens": 5}, "num_speculative_tokens is 5, above vLLM's"),
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


@pytest.mark.parametrize("adaptive_k", [True, "auto"])
def test_adaptive_k_moves_each_rows_budget_within_the_configs_k(vllm_config, tmp_path, monkeypatch, caplog,
                                                               adaptive_k):
    """``auto`` (the embedded engine's timed policy) runs as ``true`` here, and says so once."""
    path = write_config(tmp_path / "a.yaml", proposer={"name": "ngram"}, num_speculative_tokens=3,
                        adaptive_k=adaptive_k)
    monkeypatch.setenv("SPECPLUG_CONFIG", path)
    from specplug_vllm.strategy import warn_auto_is_heuristic

    warn_auto_is_heuristic.cache_clear()
    proposer, batch = Proposer(vllm_config), Batch()
    batch.set(0, REPEATING)
    assert batch.propose(proposer, [[6], [], [], []])[0] == [8, 9, 5]
    batch.set(0, REPEATING + [1])  # vLLM rejected the first draft token and sampled 1 instead
    batch.propose(proposer, [[1], [], [], []])
    assert proposer.rows.tracker.by_row[0].k == 2
    batch.set(0, REPEATING + [1, 5])  # nothing was drafted after the unseen 1
    assert batch.propose(proposer, [[5], [], [], []])[0] == [6, 1]  # k = 2 now
    batch.set(0, REPEATING + [1, 5, 6, 1, 5])  # both accepted, plus a bonus token
    batch.propose(proposer, [[6, 1, 5], [], [], []])
    assert proposer.rows.tracker.by_row[0].k == 3  # back up, never above the config's k
    assert ("runs as adaptive_k: true" in caplog.text) == (adaptive_k == "auto")


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
    stats = json.loads((tmp_path / f"stats-{os.getpid()}.json").read_text())
    assert [s["proposer"] for s in stats["strategies"]] == ["ngram", "none"]
    assert stats["strategies"][0] | {"acceptance": 1.0} == {
        "proposer": "ngram", "config": path, "k": 3, "steps": 1, "drafted": 3, "accepted": 3,
        "accepted_by_position": [1, 1, 1], "acceptance": 1.0}
    assert stats["swaps"][0]["to"] == "none" and stats["rejected"] == []
