"""Speculation counters of a host that has no metrics endpoint of its own (inside vLLM, TensorRT-LLM).

Per strategy, under vLLM's spec-decode names: drafts (row-steps that drafted), draft tokens, accepted
tokens and accepted tokens by draft position, plus the widths ``auto`` chose; and every swap, refused
config and plugin fault. They are logged every ``SPECPLUG_STATS_INTERVAL`` seconds (default 30; 0:
every step) and, when ``SPECPLUG_STATS_FILE`` is set, written there as JSON (replaced atomically; one
file per process, named with its pid when ``{pid}`` appears in the path).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

logger = logging.getLogger("specplug.hosting")


@dataclass
class StrategyCounters:
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    auto_widths: dict[int, int] = field(default_factory=dict)  # draft budget auto chose -> row-steps
    auto_step_ms: dict[str, float] = field(default_factory=dict)  # what auto believes a step costs, where measured

    def record(self, num_draft: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft
        self.num_accepted_tokens += num_accepted
        missing = num_draft - len(self.num_accepted_tokens_per_pos)
        self.num_accepted_tokens_per_pos += [0] * max(0, missing)
        for position in range(num_accepted):
            self.num_accepted_tokens_per_pos[position] += 1

    @property
    def acceptance(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0


class DraftStats:
    def __init__(self, source: str, default: str, log: logging.Logger = logger) -> None:
        self.log = log  # the host's logger (vLLM's, inside vLLM: its handlers and format)
        self.path = os.environ.get("SPECPLUG_STATS_FILE", "").replace("{pid}", str(os.getpid()))
        self.interval = float(os.environ.get("SPECPLUG_STATS_INTERVAL", "30"))
        self.source, self.default = source, default
        self.steps = 0  # steps in which any row was drafted for
        self.strategies: dict[str, StrategyCounters] = {}
        self.swaps: list[dict[str, object]] = []
        self.rejected: list[dict[str, str]] = []
        self.faults: Counter[str] = Counter()  # "strategy/stage" -> faults
        self._step_ms: dict[str, Callable[[], dict[str, float]]] = {}  # strategy -> its auto policy's step costs
        self._last_report = time.monotonic()

    def of(self, name: str) -> StrategyCounters:
        return self.strategies.setdefault(name, StrategyCounters())

    def record(self, strategy: str, num_draft: int, num_accepted: int) -> None:
        self.of(strategy).record(num_draft, num_accepted)

    def chose(self, strategy: str, chosen: Counter, step_ms: Callable[[], dict[str, float]]) -> None:
        """Add what an ``auto`` policy chose since it was last asked (and clear it there); ``step_ms`` tells
        what it believes a step costs, read when the counters are reported (not every step)."""
        counters = self.of(strategy)
        for k, n in chosen.items():
            counters.auto_widths[k] = counters.auto_widths.get(k, 0) + n
        chosen.clear()
        self._step_ms[strategy] = step_ms

    def swapped(self, old: str, new: str, source: str, in_flight: int) -> None:
        self.swaps.append({"from": old, "to": new, "config": source, "in_flight": in_flight, "time": time.time()})
        self.source, self.default = source, new
        self.report(force=True)

    def reject(self, config: str, error: str) -> None:
        self.rejected.append({"config": config, "error": error, "time": str(time.time())})
        self.report(force=True)

    def faulted(self, faults: list) -> None:
        for fault in faults:
            self.faults[f"{fault.strategy}/{fault.stage}"] += 1

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.interval:
            return
        self._last_report = now
        for name, step_ms in self._step_ms.items():
            self.of(name).auto_step_ms = step_ms()
        for name, s in self.strategies.items():
            if s.num_draft_tokens:
                self.log.info("specplug %s (%s): %d drafts, %d draft tokens, %d accepted (%.1f%%), accepted by "
                            "position %s%s", name, self.source, s.num_drafts, s.num_draft_tokens,
                            s.num_accepted_tokens, 100 * s.acceptance, s.num_accepted_tokens_per_pos,
                            f", auto widths {dict(sorted(s.auto_widths.items()))}" if s.auto_widths else "")
        if self.path:
            self._write()

    def as_dict(self) -> dict:
        return {"pid": os.getpid(), "config": self.source, "default": self.default, "steps": self.steps,
                "strategies": {name: asdict(s) | {"acceptance": s.acceptance} for name, s in self.strategies.items()},
                "swaps": self.swaps, "rejected": self.rejected, "faults": dict(self.faults)}

    def _write(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.as_dict(), f, indent=1)
        os.replace(tmp, self.path)
