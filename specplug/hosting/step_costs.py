"""What a step costs, as ``auto`` learns it: a prior by token count, corrected by every measured step.

- ``StepCosts``: an engine that pads a step to its widest row (the embedded engine): a step of B rows at
  width W costs what its B * W tokens cost, corrected per (rows, width) by the median of its recent
  steps. A width is measured only while it is chosen, so one slow step (the OS, a neighbour's burst)
  must not decide it: read as it came, one 4-8x step at width 2 made an EAGLE-3 head's verify look too
  dear to choose again, and auto drafted nothing for the rest of the run (Intel Xeon, 2026-12-07).
- ``TokenCosts``: an engine that packs each row's own tokens (vLLM, TensorRT-LLM): a step costs what its
  tokens cost, whatever the rows; every measured step corrects the estimate at its token count, and a
  count not yet measured reads the correction between its measured neighbours.
"""

from __future__ import annotations

import bisect
import statistics
from collections import deque

COST_DECAY = 0.9  # weight of older step-time ratios at one token count (TokenCosts)
RECENT_STEPS = 5  # steps at one (rows, width) whose median ratio is its cost (StepCosts)
SETTLED = 3  # until a (rows, width) has this many steps, the others' ratio fills in for the missing ones


class Prior:
    """Seconds for a forward of ``tokens``, interpolated from a table of ms by token count (linearly
    extrapolated past it)."""

    def __init__(self, prior_ms_by_tokens: dict[int, float]):
        self.tokens = sorted(prior_ms_by_tokens)
        self.prior_ms = [prior_ms_by_tokens[t] for t in self.tokens]

    def __call__(self, tokens: int) -> float:
        return max(_interpolate(self.tokens, self.prior_ms, tokens), self.prior_ms[0]) / 1000.0


def _interpolate(xs: list[int], ys: list[float], x: int) -> float:
    """``ys`` at ``x`` on the line through the two nearest of the sorted ``xs`` (extended past their ends)."""
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _decayed(old: float | None, new: float) -> float:
    return new if old is None else COST_DECAY * old + (1 - COST_DECAY) * new


class StepCosts:
    """Seconds per verify step by (rows, width): measured prior by token count, corrected online."""

    def __init__(self, prior_ms_by_tokens: dict[int, float]):
        self.prior = Prior(prior_ms_by_tokens)
        self.recent: dict[tuple[int, int], deque[float]] = {}  # measured / prior of the last steps at (rows, width)
        self.median: dict[tuple[int, int], float] = {}  # of each one's recent ratios

    def seconds(self, rows: int, width: int) -> float:
        seen = self.recent.get((rows, width), ())
        if len(seen) >= SETTLED:
            ratio = self.median[(rows, width)]
        else:  # few or none: the others' correction stands in for the steps not yet seen
            ratio = statistics.median([*seen, *[self._others(rows, width)] * (SETTLED - len(seen))])
        return self.prior(rows * width) * ratio

    def _others(self, rows: int, width: int) -> float:
        """What this batch size (else any) measured against the prior at other widths."""
        others = {key: r for key, r in self.median.items() if key != (rows, width)}
        near = [r for (b, _), r in others.items() if b == rows] or list(others.values()) or [1.0]
        return sum(near) / len(near)

    def measured_ms(self) -> dict[str, float]:
        """What a step costs where one was measured, in ms, by "rows x width"."""
        return {f"{b}x{w}": round(1000 * self.seconds(b, w), 2) for b, w in sorted(self.recent)}

    def observe(self, rows: int, width: int, seconds: float) -> None:
        recent = self.recent.setdefault((rows, width), deque(maxlen=RECENT_STEPS))
        recent.append(seconds / self.prior(rows * width))
        self.median[(rows, width)] = statistics.median(recent)


class TokenCosts:
    """Seconds per step by the tokens it verifies (a packed engine), shared by every batch size.

    Within the token counts measured, the correction of the prior is interpolated between the nearest
    measured counts. Past them, the line fitted to the measured steps (seconds against tokens, recent
    steps weighing most) extends the estimate, never below the cost at the widest count measured: the
    prior's own slope is a guess (``assumed_prior``), the fitted one is this engine's."""

    def __init__(self, prior_ms_by_tokens: dict[int, float]):
        self.prior = Prior(prior_ms_by_tokens)
        self.ratio: dict[int, float] = {}  # measured / prior at a token count
        self.fit = [0.0] * 5  # decayed sums of weight, t, s, t * t, t * s over measured steps

    def seconds(self, tokens: int, base: int | None = None) -> float:
        """A step of ``tokens``; with ``base`` (the step's tokens without drafts), never less than the step of
        ``base`` plus the measured line's slope per token added. One count's few, noisy steps can read
        cheaper than the count below it (a 9-token step at 74 ms beside 8 tokens at 77, vLLM, AMD EPYC,
        2026-12-02): without the floor the first draft tokens look free and every row drafts one."""
        raw = self._seconds(tokens)
        slope = self._slope()
        if base is None or tokens <= base or slope is None:
            return raw
        return max(raw, self._seconds(base) + max(slope, 0.0) * (tokens - base))

    def _seconds(self, tokens: int) -> float:
        known = sorted(self.ratio)
        if known and tokens > known[-1]:
            widest = self.prior(known[-1]) * self.ratio[known[-1]]
            line = self._line(tokens)
            return max(widest, line) if line is not None else self.prior(tokens) * self.ratio[known[-1]]
        return self.prior(tokens) * self._ratio(tokens, known)

    def _ratio(self, tokens: int, known: list[int]) -> float:
        if tokens in self.ratio:
            return self.ratio[tokens]
        if not known:
            return 1.0
        if tokens < known[0]:  # below what was measured: the nearest correction
            return self.ratio[known[0]]
        return _interpolate(known, [self.ratio[t] for t in known], tokens)  # between two measured counts

    def _slope(self) -> float | None:
        """Seconds per token of the line fitted to the measured steps (None until two counts are measured)."""
        w, t, s, tt, ts = self.fit
        spread = w * tt - t * t
        if len(self.ratio) < 2 or spread <= 1e-9 * max(w * tt, 1e-12):
            return None
        return (w * ts - t * s) / spread

    def _line(self, tokens: int) -> float | None:
        slope = self._slope()
        if slope is None:
            return None
        w, t, s = self.fit[:3]
        return (s - slope * t) / w + max(slope, 0.0) * tokens

    def measured_ms(self) -> dict[str, float]:
        """What a step costs where one was measured, in ms, by the tokens it verified."""
        return {str(t): round(1000 * self._seconds(t), 2) for t in sorted(self.ratio)}

    def observe(self, tokens: int, seconds: float) -> None:
        self.ratio[tokens] = _decayed(self.ratio.get(tokens), seconds / self.prior(tokens))
        decay = 1 - (1 - COST_DECAY) / 10  # the line remembers longer than one count's correction
        self.fit = [decay * old + new for old, new in zip(self.fit, (1.0, tokens, seconds, tokens * tokens,
                                                                     tokens * seconds))]
