"""``auto``: each step, the verify width (and so every row's draft budget, 0 included) that gives the
most expected tokens per second of step time, from measured costs and measured acceptance.

- Cost of a step with B rows and width W: a prior from the forward cost of B * W tokens measured at
  start (``prior_ms_by_tokens``), corrected online by the measured step times at (B, W); plus the
  proposer's own measured time when anything is drafted.
- Acceptance: per row, the chance that a draft token is accepted given the ones before it were,
  counted from its own recent steps and shrunk toward the strategy-wide rate (a few pseudo-steps). In
  a packed host a row's steps without a draft age its counts too, so a row cut to nothing early (a
  grounded answer that starts copying later) returns to the strategy-wide rate and is tried again. (Not
  in the embedded engine, where all rows share one width: there, ageing every row through a run of
  plain steps drew auto back to wide verifies at 32 streams: 0.62-0.93x of `none`, against 1.15x without,
  Intel Xeon, 2026-12-02, docs/benchmarks.md.)
- A row with per-token acceptance a and budget k emits (1 - a^(k+1)) / (1 - a) tokens on average.
- Drafts that carry a per-token ``confidence`` (``suffix``): the proposer drafts its full k, then the
  step keeps the width whose expected tokens per second is highest, each token's chance of acceptance
  read from a calibration of the stated confidence against what was accepted (``Calibration``), scaled
  by the row's acceptance against all rows'. The proposer's own numbers are never trusted as they are:
  only what they turned out to be worth. Such a proposer is called only while calling it pays: the
  expected tokens per second of the trimmed drafts, the proposer's own time included, against plain
  decoding's (``draft_value``, decayed: slowly as it falls, fast as it rises, so a passage of unsure
  drafts does not close a head that pays on average); while it does not, steps decode plainly and only exploring
  ones call it (an EAGLE-3 head whose drafts cost more than they are worth on open-ended text). A
  proposer that costs next to nothing (``CHEAP_PROPOSER`` of a plain step: ngram, suffix) is always
  called: its drafts are weighed every step. A dearer one drafts only as deep as the steps keep (the
  decayed mean of the tokens kept, rounded; one deeper on exploring steps), not its full k: an EAGLE-3
  head pays for every chained draft step it takes. The proposer's time is read only from a call that
  follows a call: the first after a run of plain steps catches up on every position since (a head fed
  twenty positions at once), and counting it would make calling look dearer than it is.
- In a packed host a cheap proposer without confidences also drafts its full k for every row, and the
  budgets are then allocated over the drafts that exist, so no share goes to a row whose proposer found
  nothing. Dearer proposers get their budgets first, as above, so that they draft only what is verified.
- A margin (``MARGIN``): drafting is chosen only where its expected tokens per second beat the step
  without drafts by 5%. The best of several noisy estimates reads high (the winner's curse), and at
  32 rows a wide verify and plain decoding are near a tie (docs/benchmarks.md). A near tie is not
  worth a wide verify's risk.
- Exploration: with probability ``explore`` a width next to the best one, so the estimates around the
  choice stay fresh (a random far width could cost several steps' time on a CPU), or, where rows share
  a width, the lowest one: plain decoding is the baseline every choice is judged against.
Width 1 is plain decoding (nothing is drafted, the proposer is not called), so auto can always fall
back to it. Static tables (vLLM's ``num_speculative_tokens_per_batch_size``, TensorRT-LLM's
``draft_len_schedule``) fix this choice per batch size ahead of time; auto measures it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Sequence

from specplug.hosting.step_costs import StepCosts, TokenCosts

ROW_DECAY = 0.8  # weight of a row's older steps per new step
GLOBAL_DECAY = 0.98
PRIOR_STEPS = 2.0  # pseudo-steps of the strategy-wide rate in a row's estimate
CHEAP_PROPOSER = 0.02  # of a plain step: a proposer this cheap drafts first and is cut after (packed hosts)
DEPTH_DECAY = 0.9  # weight of older steps in the depth a dear confident proposer drafts to
VALUE_FALLS, VALUE_RISES = 0.95, 0.8  # weight of older steps in the value of calling a dear proposer, as a
# step reads below it or above it (``_value_of_drafting``)
MARGIN = 0.05  # a step that drafts must beat decoding without drafts by this share of expected tokens per second


class Acceptance:
    """Decayed counts of accepted draft tokens and of trials (accepted + the first rejection)."""

    def __init__(self, decay: float, accepted: float = 0.0, trials: float = 0.0):
        self.decay, self.accepted, self.trials = decay, accepted, trials

    def add(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.accepted = self.accepted * self.decay + accepted
            self.trials = self.trials * self.decay + accepted + (accepted < drafted)

    def age(self) -> None:
        """A step without a trial: what was seen counts less, so the estimate drifts back to its prior."""
        self.accepted *= self.decay
        self.trials *= self.decay

    def rate(self, prior: float = 0.5, weight: float = 0.0) -> float:
        total = self.trials + weight
        return (self.accepted + prior * weight) / total if total else prior


class Calibration:
    """What a stated confidence is worth: per confidence bin (tenths of [0, 1]), the decayed share of
    draft tokens accepted given the ones before were, shrunk toward the stated value itself."""

    def __init__(self, bins: int = 10):
        self.bins = [Acceptance(GLOBAL_DECAY) for _ in range(bins)]

    def _bin(self, confidence: float) -> Acceptance:
        return self.bins[min(int(confidence * len(self.bins)), len(self.bins) - 1)]

    def rate(self, confidence: float) -> float:
        return self._bin(confidence).rate(confidence, PRIOR_STEPS)

    def observe(self, confidence: Sequence[float], accepted: int) -> None:
        """One verified draft: its tokens up to the first rejection were tried, the first ``accepted`` passed."""
        for j, c in enumerate(confidence[: accepted + 1]):
            self._bin(c).add(1, int(j < accepted))


def expected_from_rates(rates: Sequence[float], budget: int) -> float:
    """Tokens a row emits with the first ``budget`` drafts, the i-th accepted with ``rates[i]`` after the
    ones before."""
    prob, total = 1.0, 1.0
    for rate in rates[:budget]:
        prob *= rate
        total += prob
    return total


def expected_tokens(rate: float, budget: int) -> float:
    """Tokens a row emits with ``budget`` drafts, each accepted with ``rate`` after the ones before."""
    if rate >= 1.0:
        return budget + 1.0
    return (1.0 - rate ** (budget + 1)) / (1.0 - rate)


def gains(rate, budget: int) -> list[float]:
    """The chance that each of a row's first ``budget`` drafts is accepted (with all before it): what each
    adds to the row's expected tokens. ``rate``: one per-token rate, or each token's own."""
    rates = [rate] * budget if isinstance(rate, float) else list(rate[:budget])
    out, prob = [], 1.0
    for r in rates:
        prob *= r
        out.append(prob)
    return out


class AutoDraftLength:
    """The ``DraftPolicy`` of the ``auto`` strategy (see the module docstring).

    ``packed``: the host verifies each row's own tokens only (vLLM, TensorRT-LLM), so rows get budgets of
    their own, the most valuable draft tokens over all rows first; otherwise (the embedded engine pads
    every row to the widest) one width for all its rows."""

    def __init__(self, k: int, prior_ms_by_tokens: dict[int, float], explore: float = 0.05, seed: int = 0,
                 packed: bool = False, margin: float = MARGIN):
        self.k, self.explore, self.packed, self.margin = k, explore, packed, margin
        self.costs = StepCosts(prior_ms_by_tokens)
        self.token_costs = TokenCosts(prior_ms_by_tokens)
        self.overall = Acceptance(GLOBAL_DECAY)
        self.rows: dict[Hashable, Acceptance] = {}
        self.calibration = Calibration()
        self.confident = False  # the proposer states confidences: draft k, then trim
        self.kept_depth = float(k)  # decayed mean of the most draft tokens a step kept (confident proposers)
        self.propose_seconds = 0.0  # decayed mean time of a proposer call that drafted
        self.drafted = False  # whether this step's proposer call drafted anything (before trimming)
        self.calling = self.after_call = False  # whether this step asks for drafts, and whether the last one did
        self.deferred = False  # this step's budgets are chosen once the drafts are known (cheap proposer, packed)
        self.draft_value = 1.0  # decayed: drafting's expected tokens per second against plain decoding's
        self.random = random.Random(seed)
        self.chosen: Counter[int] = Counter()  # budgets chosen (row-steps), for the metrics

    def step_ms(self) -> dict[str, float]:
        """What it believes a step costs, where it measured one (for the metrics)."""
        return (self.token_costs if self.packed else self.costs).measured_ms()

    def rate(self, row) -> float:
        mine = self.rows.get(row.seq_id)
        prior = self.overall.rate()
        return prior if mine is None else mine.rate(prior, PRIOR_STEPS)

    def plan(self, rows: list, batch_size: int, floor_width: int) -> list[int]:
        budgets = self._plan(rows, batch_size, floor_width)
        self.after_call, self.calling = self.calling, any(budgets)
        return budgets

    def _plan(self, rows: list, batch_size: int, floor_width: int) -> list[int]:
        self._forget_finished(rows)
        if self.confident:  # ``trim`` chooses, once the drafts and their confidences are known
            cheap = self._cheap(batch_size)
            if self.draft_value < 1.0 and not cheap and self.random.random() >= self.explore:
                self.chosen[0] += len(rows)
                return [0] * len(rows)
            return [self.k if cheap else self._depth()] * len(rows)
        if self.packed:
            self.deferred = self._cheap(batch_size)
            if self.deferred:
                return [self.k] * len(rows)
            return self._allocate([gains(self.rate(row), self.k) for row in rows], batch_size, self.propose_seconds)
        rates = [self.rate(row) for row in rows]
        width = self._choose(min(floor_width, self.k + 1), self.k + 1,
                             lambda w: self._throughput(rates, batch_size, w, self.propose_seconds))
        self.chosen[width - 1] += len(rows)
        return [width - 1] * len(rows)

    def _depth(self) -> int:
        """How deep a dear confident proposer drafts: as deep as the steps keep, one deeper when exploring."""
        explore = self.random.random() < self.explore
        return min(self.k, max(1, int(self.kept_depth + 0.5)) + explore)

    def _cheap(self, batch_size: int) -> bool:
        """Whether the proposer's calls cost next to nothing against a plain step (``CHEAP_PROPOSER``)."""
        plain = self.token_costs.seconds(batch_size) if self.packed else self.costs.seconds(batch_size, 1)
        return self.propose_seconds <= CHEAP_PROPOSER * plain

    def trim(self, rows: list, drafts: list, batch_size: int, floor_width: int) -> list[int]:
        """How many of each row's draft tokens to verify (drafts with confidences only; others kept)."""
        lengths = [len(d.token_ids) for d in drafts]
        self.drafted = any(lengths)
        if not any(d.confidence is not None for d in drafts):
            if self.packed and self.deferred:  # the proposer's time is spent: only the verify is weighed
                return self._allocate([gains(self.rate(row), n) for row, n in zip(rows, lengths)], batch_size, 0.0)
            return lengths
        self.confident = True
        rates = [self._confidence_rates(row, d.confidence) if d.confidence is not None else self.rate(row)
                 for row, d in zip(rows, drafts)]
        if self.packed:
            row_gains = [gains(a, n) for a, n in zip(rates, lengths)]
            budgets = self._allocate(row_gains, batch_size, 0.0)
            tokens = batch_size + sum(sum(g[:b]) for g, b in zip(row_gains, budgets))
            seconds = self.token_costs.seconds(batch_size + sum(budgets), base=batch_size)
            self._value_of_drafting(tokens / (seconds + self.propose_seconds),
                                    batch_size / self.token_costs.seconds(batch_size))
            self._kept(max(budgets, default=0), lengths)
            return budgets
        width = self._choose(min(floor_width, max(lengths) + 1), max(lengths) + 1,
                             lambda w: self._throughput(rates, batch_size, w, 0.0))
        self.chosen[width - 1] += len(rows)
        step = self.costs.seconds(batch_size, width)
        self._value_of_drafting(self._throughput(rates, batch_size, width, 0.0) * step / (step + self.propose_seconds),
                                self._throughput(rates, batch_size, 1, 0.0))
        self._kept(width - 1, lengths)
        return [min(n, width - 1) for n in lengths]

    def _kept(self, kept: int, lengths: list[int]) -> None:
        """A step kept at most ``kept`` draft tokens of a row: the depth the proposer drafts to follows."""
        if any(lengths):
            self.kept_depth = DEPTH_DECAY * self.kept_depth + (1 - DEPTH_DECAY) * min(kept, max(lengths))

    def _value_of_drafting(self, drafting: float, plain: float) -> None:
        """Expected tokens per second of this step's trimmed drafts (their proposer's time included) and
        of plain decoding: whether calling the proposer pays (``plan``). The value falls slowly and rises
        fast: a passage the head does not know (a run of cut drafts, each call a loss) closed a head that
        paid on average when it fell as fast (auto read 1.11-1.14x where fixed k = 1 read 1.20-1.21x, Intel
        Xeon, 2026-12-07); a head that never pays still closes, its every step reading below plain."""
        value = drafting / plain
        decay = VALUE_FALLS if value < self.draft_value else VALUE_RISES
        self.draft_value = decay * self.draft_value + (1 - decay) * value

    def _allocate(self, row_gains: list[list[float]], batch_size: int, propose_seconds: float) -> list[int]:
        """Per-row budgets for a packed step: the t most valuable draft tokens over all rows, with t the
        count of most expected tokens per second (each row's gains fall with depth, so a row's share of
        the t is always a prefix of its draft); with probability ``explore`` a quarter of a token per row more
        or fewer (a whole token per row would double the tokens of a 16-row step that drafts nothing)."""
        ranked = sorted(((g, i) for i, row in enumerate(row_gains) for g in row), key=lambda x: -x[0])
        tokens, best_t = float(batch_size), 0  # rows of other strategies emit one token at least
        best = without_drafts = tokens / self.token_costs.seconds(batch_size)
        for t, (g, _) in enumerate(ranked, 1):
            tokens += g
            value = tokens / (self.token_costs.seconds(batch_size + t, base=batch_size) + propose_seconds)
            if value > best:
                best_t, best = t, value
        if best < (1 + self.margin) * without_drafts:
            best_t = 0
        if self.random.random() < self.explore:
            step = max(1, len(row_gains) // 4)
            best_t = min(len(ranked), max(0, best_t + self.random.choice((-1, 1)) * step))
        budgets = [0] * len(row_gains)
        for _, i in ranked[:best_t]:
            budgets[i] += 1
        for b in budgets:
            self.chosen[b] += 1
        return budgets

    def _confidence_rates(self, row, confidence) -> list[float]:
        """Each token's calibrated chance, scaled by how this row's drafts fare against all rows'."""
        overall = self.overall.rate()
        factor = self.rate(row) / overall if overall > 0 else 1.0
        return [min(1.0, self.calibration.rate(c) * factor) for c in confidence]

    def _choose(self, low: int, high: int, throughput) -> int:
        """The width of most expected tokens per second; with probability ``explore`` a neighbour of it or
        the lowest width (plain decoding where no other strategy drafts): every choice is judged against
        the baseline, and a baseline measured only long ago (its cost guessed from the wide steps' ratio
        to the prior) can keep a wide width chosen at a load where it loses."""
        values = {width: throughput(width) for width in range(low, high + 1)}
        best = max(values, key=values.get)
        if values[best] < (1 + self.margin) * values[low]:
            best = low
        if self.random.random() < self.explore:
            return self.random.choice((max(low, best - 1), min(high, best + 1), low))
        return best

    def _throughput(self, rates: list, batch_size: int, width: int, propose_seconds: float) -> float:
        seconds = self.costs.seconds(batch_size, width) + (propose_seconds if width > 1 else 0.0)
        # rows of other strategies emit one token at least; counted alike at every width
        tokens = sum(expected_tokens(a, width - 1) if isinstance(a, float) else expected_from_rates(a, width - 1)
                     for a in rates) + (batch_size - len(rates))
        return tokens / seconds

    def observe(self, rows: list, drafts: list, accepted: list[int], batch_size: int, width: int,
                target_seconds: float, propose_seconds: float, tokens: int | None = None) -> None:
        """One verified step: its cost (``tokens``: what a packed step verified; else ``batch_size`` rows at
        ``width``) and what each of this strategy's rows had accepted of its draft."""
        if self.packed and tokens is not None:
            self.token_costs.observe(tokens, target_seconds)
        else:
            self.costs.observe(batch_size, width, target_seconds)
        if self.drafted and self.after_call:  # its time counts even where every draft was then cut
            self.propose_seconds = 0.8 * self.propose_seconds + 0.2 * propose_seconds
        for row, draft, a in zip(rows, drafts, accepted):
            mine = self.rows.setdefault(row.seq_id, Acceptance(ROW_DECAY))
            if draft.token_ids:
                mine.add(len(draft.token_ids), a)
            elif self.packed:  # a row cut to nothing is not judged forever by its first drafts: it gets tried again
                mine.age()
            self.overall.add(len(draft.token_ids), a)
            if draft.confidence is not None:
                self.calibration.observe(draft.confidence, a)

    def _forget_finished(self, live: list) -> None:
        if len(self.rows) > 4 * max(len(live), 16):
            keep = {row.seq_id for row in live}
            self.rows = {key: value for key, value in self.rows.items() if key in keep}


def assumed_prior(most_tokens: int, tokens_per_step: float = 16.0) -> dict[int, float]:
    """A forward-cost prior for a host that cannot time a forward before it serves (an engine adapter):
    a step's cost grows by one step's worth every ``tokens_per_step`` tokens. Its level is never used as
    it is: every step's measured time corrects it where ``auto`` chooses (``StepCosts``), so it only
    decides the first choices, which it makes cautious at large batches."""
    counts = sorted({1, *(2**i for i in range(1, max(1, most_tokens).bit_length() + 1)), most_tokens})
    return {t: 1.0 + t / tokens_per_step for t in counts}
