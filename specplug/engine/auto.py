"""``auto``: each step, the verify width (and so every row's draft budget, 0 included) that gives the
most expected tokens per second of step time, from measured costs and measured acceptance.

- Cost of a step with B rows and width W: a prior from the forward cost of B * W tokens measured at
  start (``prior_ms_by_tokens``), corrected online by the measured step times at (B, W); plus the
  proposer's own measured time when anything is drafted.
- Acceptance: per row, the chance that a draft token is accepted given the ones before it were,
  counted from its own recent steps and shrunk toward the strategy-wide rate (a few pseudo-steps).
- A row with per-token acceptance a and budget k emits (1 - a^(k+1)) / (1 - a) tokens on average.
- Exploration: with probability ``explore`` a random width, so estimates at unused widths stay fresh.
Width 1 is plain decoding (nothing is drafted, the proposer is not called), so auto can always fall
back to it. Static tables (vLLM's ``num_speculative_tokens_per_batch_size``, TensorRT-LLM's
``draft_len_schedule``) fix this choice per batch size ahead of time; auto measures it.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Hashable

ROW_DECAY = 0.8  # weight of a row's older steps per new step
GLOBAL_DECAY = 0.98
PRIOR_STEPS = 2.0  # pseudo-steps of the strategy-wide rate in a row's estimate
COST_DECAY = 0.9  # weight of older step-time ratios at one (B, W)


class Acceptance:
    """Decayed counts of accepted draft tokens and of trials (accepted + the first rejection)."""

    def __init__(self, decay: float, accepted: float = 0.0, trials: float = 0.0):
        self.decay, self.accepted, self.trials = decay, accepted, trials

    def add(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.accepted = self.accepted * self.decay + accepted
            self.trials = self.trials * self.decay + accepted + (accepted < drafted)

    def rate(self, prior: float = 0.5, weight: float = 0.0) -> float:
        total = self.trials + weight
        return (self.accepted + prior * weight) / total if total else prior


def expected_tokens(rate: float, budget: int) -> float:
    """Tokens a row emits with ``budget`` drafts, each accepted with ``rate`` after the ones before."""
    if rate >= 1.0:
        return budget + 1.0
    return (1.0 - rate ** (budget + 1)) / (1.0 - rate)


class StepCosts:
    """Seconds per verify step by (rows, width): measured prior by token count, corrected online."""

    def __init__(self, prior_ms_by_tokens: dict[int, float]):
        self.tokens = sorted(prior_ms_by_tokens)
        self.prior_ms = [prior_ms_by_tokens[t] for t in self.tokens]
        self.ratio: dict[tuple[int, int], float] = {}  # measured / prior at (rows, width)

    def prior(self, tokens: int) -> float:
        """Interpolated (linearly extrapolated past the table) seconds for a forward of ``tokens``."""
        xs, ys = self.tokens, self.prior_ms
        i = min(max(bisect.bisect_left(xs, tokens), 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(y0 + (y1 - y0) * (tokens - x0) / (x1 - x0), ys[0]) / 1000.0

    def seconds(self, rows: int, width: int) -> float:
        ratio = self.ratio.get((rows, width))
        if ratio is None:  # unseen: what this batch size (else any) measured against the prior
            near = [r for (b, _), r in self.ratio.items() if b == rows] or list(self.ratio.values()) or [1.0]
            ratio = sum(near) / len(near)
        return self.prior(rows * width) * ratio

    def observe(self, rows: int, width: int, seconds: float) -> None:
        measured = seconds / self.prior(rows * width)
        old = self.ratio.get((rows, width))
        self.ratio[(rows, width)] = measured if old is None else COST_DECAY * old + (1 - COST_DECAY) * measured


class AutoDraftLength:
    """The ``DraftPolicy`` of the ``auto`` strategy (see the module docstring)."""

    def __init__(self, k: int, prior_ms_by_tokens: dict[int, float], explore: float = 0.05, seed: int = 0):
        self.k, self.explore = k, explore
        self.costs = StepCosts(prior_ms_by_tokens)
        self.overall = Acceptance(GLOBAL_DECAY)
        self.rows: dict[Hashable, Acceptance] = {}
        self.propose_seconds = 0.0  # decayed mean time of a proposer call that drafted
        self.random = random.Random(seed)
        self.chosen: Counter[int] = Counter()  # budgets chosen, for the metrics

    def rate(self, row) -> float:
        mine = self.rows.get(row.request.request_id)
        prior = self.overall.rate()
        return prior if mine is None else mine.rate(prior, PRIOR_STEPS)

    def plan(self, rows: list, batch_size: int, floor_width: int) -> list[int]:
        widths = range(min(floor_width, self.k + 1), self.k + 2)
        if self.random.random() < self.explore:
            width = self.random.choice(widths)
        else:
            rates = [self.rate(row) for row in rows]
            width = max(widths, key=lambda w: self._throughput(rates, batch_size, w))
        self.chosen[width - 1] += len(rows)
        self._forget_finished(rows)
        return [width - 1] * len(rows)

    def _throughput(self, rates: list[float], batch_size: int, width: int) -> float:
        seconds = self.costs.seconds(batch_size, width) + (self.propose_seconds if width > 1 else 0.0)
        # rows of other strategies emit one token at least; counted alike at every width
        tokens = sum(expected_tokens(a, width - 1) for a in rates) + (batch_size - len(rates))
        return tokens / seconds

    def observe(self, rows: list, drafted: list[int], accepted: list[int], batch_size: int, width: int,
                target_seconds: float, propose_seconds: float) -> None:
        self.costs.observe(batch_size, width, target_seconds)
        if any(drafted):
            self.propose_seconds = 0.8 * self.propose_seconds + 0.2 * propose_seconds
        for row, d, a in zip(rows, drafted, accepted):
            self.rows.setdefault(row.request.request_id, Acceptance(ROW_DECAY)).add(d, a)
            self.overall.add(d, a)

    def _forget_finished(self, live: list) -> None:
        if len(self.rows) > 4 * max(len(live), 16):
            keep = {row.request.request_id for row in live}
            self.rows = {key: value for key, value in self.rows.items() if key in keep}
