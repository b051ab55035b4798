"""The hosting layer's live table: a swap rebuilds only what it changes, and rows of a strategy it kept
go on untouched (their proposer's state, budgets and sampling draws as they were)."""

from __future__ import annotations

from specplug.config import load_config
from specplug.hosting.live import LiveTable
from specplug.hosting.rows import Row
from specplug.hosting.strategy import Strategy, build_table, hand_over

STRATEGIES = ["serve.strategies.big={proposer: ngram, num_speculative_tokens: 5}", "serve.strategies.none=none"]


class Proposer:
    def __init__(self, name):
        self.name, self.released = name, []

    def release(self, seq_id):
        self.released.append(seq_id)


def builder(made: list):
    def build(config, previous):
        def make(name, entry):
            made.append(name)
            return Strategy(name, Proposer(entry.proposer.name), entry.num_speculative_tokens,
                            entry.adaptive_k is True)
        return build_table(config, make, previous)
    return build


def test_a_swap_keeps_the_strategies_it_leaves_alone_and_their_rows():
    made = []
    live = LiveTable(builder(made), load_config(None, STRATEGIES))
    first = live.table
    assert sorted(made) == sorted(first.strategies) == ["auto", "big", "ngram", "none"]
    named = Row(seq_id="a", strategy=first.strategies["ngram"], num_prompt_tokens=4, named=True, k=1)
    default = Row(seq_id="b", strategy=first.default, num_prompt_tokens=4, k=2)
    big = Row(seq_id="c", strategy=first.strategies["big"], num_prompt_tokens=4, named=True, k=2)

    made.clear()
    second = live.swap(load_config(None, [*STRATEGIES, "serve.default_strategy=big"]))
    assert made == []  # only the default changed: every strategy object kept
    assert all(second.strategies[name] is first.strategies[name] for name in first.strategies)
    moved = hand_over([named, default, big], second, lambda row: row.strategy.proposer.release(row.seq_id))
    assert moved == 1 and default.strategy is second.strategies["big"] and default.k == 5
    assert (named.k, big.k) == (1, 2)  # budgets where the rows' own acceptance had moved them
    assert first.strategies["ngram"].proposer.released == ["b"]  # only the row that moved was released

    made.clear()
    third = live.swap(load_config(None, ["serve.strategies.big={proposer: ngram, num_speculative_tokens: 4}",
                                         "serve.strategies.none=none"]))
    assert made == ["big"]  # its k changed: rebuilt; the rest kept
    assert third.strategies["ngram"] is first.strategies["ngram"]
    moved = hand_over([named, default, big], third, lambda row: row.strategy.proposer.release(row.seq_id))
    assert moved == 2 and big.strategy is third.strategies["big"] and big.k == 4
    assert default.strategy is third.strategies["ngram"] and default.k == 3  # the default is ngram again: moved
    assert named.strategy is third.strategies["ngram"] and named.k == 1
