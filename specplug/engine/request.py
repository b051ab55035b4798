"""What the embedded engine is asked (``Request``), what it keeps of a running request (``EngineRow``) and
what each step gives back (``StepOutput``)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from specplug.engine.batch import TokenLogprob
from specplug.engine.stopping import StopChecker
from specplug.hosting.rows import Row
from specplug.hosting.strategy import Strategy
from specplug.metadata import SamplingParams


@dataclass
class Request:
    request_id: Hashable
    prompt_token_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before them
    strategy: Strategy | None = None  # None: the engine's default when the request starts
    logprobs: int | None = None  # None: none; n >= 0: each emitted token's logprob and the n most likely


@dataclass
class SequenceStats:
    target_forwards: int = 0  # prefill included
    draft_tokens: int = 0
    accepted_tokens: int = 0
    verify_steps: int = 0  # target forwards after prefill
    started: float = 0.0
    finished: float = 0.0


@dataclass(kw_only=True, eq=False)
class EngineRow(Row):
    """A running request of the embedded engine: a hosting ``Row`` with its tokens (prompt + output) and the
    KV-cache slot it lives in."""

    request: Request
    slot: int
    token_ids: list[int]
    stopper: StopChecker
    stats: SequenceStats = field(default_factory=SequenceStats)
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    error: str | None = None  # why the row failed (finish reason "error")

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - len(self.request.prompt_token_ids)


@dataclass
class StepOutput:
    request_id: Hashable
    new_token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "error" (see ``row.error``) or None while running
    row: EngineRow
    num_draft: int = 0  # tokens the row drafted this step (0 at prefill)
    num_accepted: int = 0  # of this step's drafts, counted in new_token_ids
    logprobs: list[TokenLogprob] | None = None  # one per new token when the request asked for them
