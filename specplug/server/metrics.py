"""Prometheus metrics, named as vLLM names its own under a ``specplug:`` prefix."""

from __future__ import annotations

import time
from collections.abc import Hashable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no `_created` series beside every counter (as vLLM)

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0, 20.0, 40.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r, p = self.registry, "specplug:"
        self.drafts = Counter(p + "spec_decode_num_drafts", "Verify steps in which a row drafted",
                              ["strategy"], registry=r)
        self.draft_tokens = Counter(p + "spec_decode_num_draft_tokens", "Draft tokens proposed", ["strategy"],
                                    registry=r)
        self.accepted_tokens = Counter(p + "spec_decode_num_accepted_tokens", "Draft tokens accepted",
                                       ["strategy"], registry=r)
        self.accepted_per_pos = Counter(p + "spec_decode_num_accepted_tokens_per_pos",
                                        "Draft tokens accepted at each draft position", ["strategy", "position"],
                                        registry=r)
        self.finished = Counter(p + "request_success", "Finished requests by finish reason", ["finished_reason"],
                                registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated", registry=r)
        self.running = Gauge(p + "num_requests_running", "Rows in the running batch", registry=r)
        self.waiting = Gauge(p + "num_requests_waiting", "Requests waiting for a row", registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Submission to first token", registry=r,
                              buckets=LATENCY_BUCKETS)
        self.itl = Histogram(p + "inter_token_latency_seconds",
                             "Time between a request's consecutive tokens (a step's time shared by its tokens)",
                             registry=r, buckets=LATENCY_BUCKETS)
        self.auto_k = Counter(p + "auto_draft_tokens_chosen", "Row-steps by the draft tokens auto had verified",
                              ["k"], registry=r)
        self.swaps = Counter(p + "strategy_swaps", "Default strategy swaps by outcome", ["outcome"], registry=r)
        self.proposer_faults = Counter(p + "proposer_faults",
                                       "Proposer failures (their rows went on without drafts) by strategy and stage",
                                       ["strategy", "stage"], registry=r)
        self.last_seen: dict[Hashable, float] = {}  # request id -> when it was submitted or last gave tokens

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def submitted(self, request) -> None:
        self.last_seen[request.request_id] = time.perf_counter()
        self.prompt_tokens.inc(len(request.prompt_token_ids))

    def aborted(self, request_id: Hashable, reason: str = "abort") -> None:
        """A request ended outside a step: the client left ("abort"), or the engine failed ("error")."""
        self.last_seen.pop(request_id, None)
        self.finished.labels(reason).inc()

    def stepped(self, engine, outputs: list, seconds: float) -> None:
        """Called on the engine thread after each step with that step's outputs."""
        now = time.perf_counter()
        for out in outputs:
            self._row(out, now)
        self.gauges(engine)

    def gauges(self, engine) -> None:
        self.running.set(len(engine.rows))
        self.waiting.set(len(engine.waiting))

    def faulted(self, faults: list) -> None:
        for fault in faults:
            self.proposer_faults.labels(fault.strategy, fault.stage).inc()

    def _row(self, out, now: float) -> None:
        strategy = out.row.strategy
        if out.num_draft:
            self.drafts.labels(strategy.name).inc()
            self.draft_tokens.labels(strategy.name).inc(out.num_draft)
            self.accepted_tokens.labels(strategy.name).inc(out.num_accepted)
            for position in range(out.num_accepted):
                self.accepted_per_pos.labels(strategy.name, str(position)).inc()
        if strategy.policy is not None and out.row.stats.verify_steps:
            self.auto_k.labels(str(out.num_draft)).inc()  # what was verified: a confident proposer drafts k, then is cut
        tokens = len(out.new_token_ids)
        self.generation_tokens.inc(tokens)
        before = self.last_seen.get(out.request_id)
        if before is not None and tokens:
            if out.row.stats.verify_steps == 0:
                self.ttft.observe(now - before)
            else:
                for _ in range(tokens):
                    self.itl.observe((now - before) / tokens)
            self.last_seen[out.request_id] = now
        if out.finish_reason is not None:
            self.last_seen.pop(out.request_id, None)
            self.finished.labels(out.finish_reason).inc()
