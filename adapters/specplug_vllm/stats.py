"""Acceptance statistics of the specplug proposer inside a vLLM worker.

vLLM's own spec-decode metrics (``vllm:spec_decode_*`` on /metrics, ``LLM.get_metrics()``) count every
draft whatever made it. These add the specplug view: per strategy (proposer and config file), drafted
and accepted tokens, acceptance by draft position, and every swap or rejected config. They are logged
every ``SPECPLUG_STATS_INTERVAL`` seconds (default 30) and, when ``SPECPLUG_STATS_FILE`` is set,
written there as JSON (replaced atomically; one file per worker process, named with its pid when
``{pid}`` appears in the path).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

logger = logging.getLogger("vllm.specplug")


@dataclass
class StrategyStats:
    proposer: str
    config: str
    k: int
    steps: int = 0  # propose calls with at least one row
    drafted: int = 0
    accepted: int = 0
    accepted_by_position: list[int] = field(default_factory=list)  # [k]

    def record(self, num_draft: int, num_accepted: int) -> None:
        self.drafted += num_draft
        self.accepted += num_accepted
        for position in range(num_accepted):
            self.accepted_by_position[position] += 1

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class AdapterStats:
    def __init__(self) -> None:
        self.path = os.environ.get("SPECPLUG_STATS_FILE", "").replace("{pid}", str(os.getpid()))
        self.interval = float(os.environ.get("SPECPLUG_STATS_INTERVAL", "30"))
        self.strategies: list[StrategyStats] = []
        self.rejected: list[dict[str, str]] = []
        self.swaps: list[dict[str, object]] = []
        self._last_report = time.monotonic()

    @property
    def current(self) -> StrategyStats:
        return self.strategies[-1]

    def start(self, proposer: str, config: str, k: int, in_flight: int = 0) -> None:
        if self.strategies:
            self.swaps.append({"from": self.current.proposer, "to": proposer, "config": config,
                               "in_flight": in_flight, "time": time.time()})
        self.strategies.append(StrategyStats(proposer, config, k, accepted_by_position=[0] * k))
        self.report(force=True)

    def reject(self, config: str, error: str) -> None:
        self.rejected.append({"config": config, "error": error, "time": str(time.time())})
        self.report(force=True)

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.interval:
            return
        self._last_report = now
        s = self.current
        if s.drafted:
            logger.info("specplug %s (%s): %d steps, %d drafted, %d accepted (%.1f%%), accepted by position %s",
                        s.proposer, s.config, s.steps, s.drafted, s.accepted, 100 * s.acceptance,
                        s.accepted_by_position)
        if self.path:
            self._write()

    def _write(self) -> None:
        data = {"pid": os.getpid(), "current": asdict(self.current),
                "strategies": [asdict(s) | {"acceptance": s.acceptance} for s in self.strategies],
                "swaps": self.swaps, "rejected": self.rejected}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)
