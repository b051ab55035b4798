"""The server's Prometheus counters, fed one step's outputs as the engine hands them over."""

from __future__ import annotations

from types import SimpleNamespace

from specplug.server.metrics import Metrics


def step_output(k: int, num_draft: int) -> SimpleNamespace:
    """What the engine returns for a row of an ``auto`` strategy after a verify step."""
    strategy = SimpleNamespace(name="auto", policy=object())
    row = SimpleNamespace(strategy=strategy, k=k, stats=SimpleNamespace(verify_steps=1))
    return SimpleNamespace(row=row, num_draft=num_draft, num_accepted=num_draft, new_token_ids=[5] * (1 + num_draft),
                           request_id="a", finish_reason=None)


def test_auto_counts_the_draft_tokens_it_had_verified_not_the_budget_it_drafted_for():
    """A cheap or confident proposer drafts its full k in every row; auto then cuts. Counting the budget
    read k = 3 for every row-step of a 32-stream run, whatever auto then verified."""
    metrics = Metrics()
    metrics.stepped(SimpleNamespace(rows=[], waiting=[]), [step_output(3, 1), step_output(3, 0)], 0.01)
    lines = [line for line in metrics.exposition().decode().splitlines()
             if line.startswith("specplug:auto_draft_tokens_chosen_total")]
    assert sorted(lines) == ['specplug:auto_draft_tokens_chosen_total{k="0"} 1.0',
                             'specplug:auto_draft_tokens_chosen_total{k="1"} 1.0']
