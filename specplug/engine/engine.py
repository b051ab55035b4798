"""The embedded engine's decode loop: admit rows, prefill, then speculative steps until done.

One step for the running rows (B rows, packed in cache slots 0..B-1):
  1. propose: the proposer drafts up to k tokens per row from the row's tokens so far;
  2. verify: one target forward over [last token, drafts] (T = K + 1 positions per row, right-padded);
  3. accept: the verifier keeps a prefix of each row's drafts and adds one recovered/bonus token;
  4. roll back: the row's cache length moves to cover only the last token and the accepted drafts.
Plain autoregressive decoding is the same step with no drafts (proposer ``none``).
Rows join (``add_request``) and leave (finish or ``abort``) between steps. Each row drafts with its own
``Strategy`` (the engine's default unless the request names one); the rows of one strategy are proposed
for together. A row's random draws are keyed by its seed and position (``position_generator``), so a
seeded request gives the same tokens whatever else shares the batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from specplug.engine.batch import TokenLogprob, token_logprobs, verify_input
from specplug.engine.faults import PluginFaults, fail_row, verify_each
from specplug.engine.stopping import StopChecker
from specplug.errors import SpecplugError
from specplug.metadata import Draft, DraftRequest, SamplingParams, VerifyOutcome
from specplug.models.llama import CompactLlama
from specplug.models.runner import StepRunner
from specplug.proposers.base import Proposer, check_drafts, next_draft_length
from specplug.engine.strategy import Strategy, group_by_strategy, observe_step, plan_budgets, trim_drafts
from specplug.sampling import make_generator, position_generator
from specplug.verifiers.base import Verifier

SEED_RANGE = 2**62  # seeds drawn for requests that bring none


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


@dataclass
class Row:
    """A running request: its tokens (prompt + output) and where its cache lives."""

    request: Request
    slot: int
    token_ids: list[int]
    stopper: StopChecker
    strategy: Strategy
    k: int  # this row's current draft budget (changes with adaptive_k or the strategy's policy)
    stats: SequenceStats = field(default_factory=SequenceStats)
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    error: str | None = None  # why the row failed (finish reason "error")
    plain: bool = False  # its proposer failed: the row decodes without drafts to the end

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - len(self.request.prompt_token_ids)


@dataclass
class StepOutput:
    request_id: Hashable
    new_token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "error" (see ``row.error``) or None while running
    row: Row
    num_draft: int = 0  # tokens the row drafted this step (0 at prefill)
    num_accepted: int = 0  # of this step's drafts, counted in new_token_ids
    logprobs: list[TokenLogprob] | None = None  # one per new token when the request asked for them


class Engine:
    def __init__(self, model: CompactLlama, tokenizer, proposer: Proposer, verifier: Verifier,
                 num_speculative_tokens: int, max_batch_size: int = 1, max_model_len: int = 2048,
                 seed: int | None = 0, eos_token_ids: Sequence[int] = (), adaptive_k: bool = False,
                 enforce_eager: bool = False, padded_steps: bool | None = None, compiled: bool = False,
                 max_speculative_tokens: int | None = None):
        self.verifier = verifier
        self.strategy = Strategy(getattr(proposer, "name", "proposer"), proposer, num_speculative_tokens, adaptive_k)
        # the widest verify step any strategy may ask for (bounds the step buffers and the context)
        self.max_k = max(max_speculative_tokens or 0, num_speculative_tokens)
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        self.max_model_len = min(max_model_len, model.shape.max_positions - self.max_k)
        # spare slots and positions: padded rows and right-padded widths never land on a real entry
        self.runner = StepRunner.create(model, max_batch_size, self.max_k + 1, self.max_model_len,
                                        enforce_eager=enforce_eager, padded=padded_steps, compiled=compiled)
        self.cache = self.runner.cache
        self.seeds = make_generator(seed, model.device)  # seeds for requests that bring none
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: deque[Request] = deque()
        self.rows: list[Row] = []  # rows[i] lives in cache slot i
        self.faults = PluginFaults()

    @property
    def proposer(self) -> Proposer:
        return self.strategy.proposer

    def check_strategy(self, strategy: Strategy) -> None:
        if strategy.k > self.max_k:
            raise SpecplugError(f"strategy '{strategy.name}' drafts up to {strategy.k} tokens; this engine was "
                                f"started for at most {self.max_k}: lower its num_speculative_tokens or restart")

    # ---- rows joining and leaving -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if not request.prompt_token_ids:
            raise SpecplugError(f"request {request.request_id!r} has an empty prompt")
        if len(request.prompt_token_ids) >= self.max_model_len:
            raise SpecplugError(
                f"prompt of request {request.request_id!r} has {len(request.prompt_token_ids)} tokens; "
                f"max_model_len is {self.max_model_len}: raise max_model_len or shorten the prompt"
            )
        if request.max_new_tokens < 1:
            raise SpecplugError(f"max_new_tokens must be >= 1 (got {request.max_new_tokens})")
        if request.strategy is not None:
            self.check_strategy(request.strategy)
        self.waiting.append(request)

    def abort(self, request_id: Hashable) -> None:
        self.waiting = deque(r for r in self.waiting if r.request_id != request_id)
        for row in list(self.rows):
            if row.request.request_id == request_id:
                row.finish_reason = "abort"
                self._release(row)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.rows)

    def _release(self, row: Row) -> None:
        """Free the row's slot, moving the last row into it so live slots stay packed."""
        self.cache.release(self.rows, row)
        try:
            row.strategy.proposer.release(row.request.request_id)
        except Exception as exc:
            self.faults.record(row.strategy, "release", exc, [])

    # ---- one engine step ------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Speculative step for the running rows, then prefill of newly admitted ones."""
        outputs = self._speculative_step(self.rows) if self.rows else []
        admitted = []
        while self.waiting and len(self.rows) + len(admitted) < self.max_batch_size:
            admitted.append(self.waiting.popleft())
        if admitted:
            outputs += self._prefill(admitted)
        for out in outputs:
            if out.finish_reason is not None:
                out.row.stats.finished = time.perf_counter()
                self._release(out.row)
        return outputs

    def _new_row(self, request: Request, slot: int) -> Row:
        strategy = request.strategy or self.strategy
        if request.sampling.seed is None:  # the row's draws (and its drafter's) still need one seed
            seed = int(torch.randint(SEED_RANGE, (1,), generator=self.seeds))
            request = dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, seed=seed))
        row = Row(request, slot, list(request.prompt_token_ids), StopChecker(self.tokenizer, request.stop),
                  strategy, strategy.k)
        row.stats.started = time.perf_counter()
        return row

    def _prefill(self, requests: list[Request]) -> list[StepOutput]:
        first = len(self.rows)
        rows = [self._new_row(r, first + i) for i, r in enumerate(requests)]
        self.rows.extend(rows)
        prompts = [r.prompt_token_ids for r in requests]
        longest = max(map(len, prompts))
        input_ids = torch.tensor([p + [0] * (longest - len(p)) for p in prompts], device=self.model.device)
        positions = torch.arange(longest, device=input_ids.device).expand(len(rows), -1)
        last = torch.tensor([[len(p) - 1] for p in prompts], device=input_ids.device)
        try:
            logits = self.model(input_ids, positions, self.cache, slice(first, first + len(rows)), last,
                                upto=longest)
        except Exception as exc:
            return self._fail_all(rows, "the target's prefill", exc)
        for row, prompt in zip(rows, prompts):
            self.cache.lengths[row.slot] = len(prompt)
        return self._accept(rows, [Draft([]) for _ in rows], logits, prefill=True)

    def _speculative_step(self, rows: list[Row]) -> list[StepOutput]:
        groups = group_by_strategy(rows)
        plan_budgets(groups, rows, self.max_k, self.faults)
        started = time.perf_counter()
        drafts = trim_drafts(groups, rows, self._propose(groups, rows), self.faults)
        proposed = time.perf_counter()
        try:
            logits = self.runner.run([[row.token_ids[-1], *d.token_ids] for row, d in zip(rows, drafts)],
                                     [self.cache.lengths[row.slot] for row in rows])
        except Exception as exc:
            return self._fail_all(rows, "the target's forward", exc)
        outputs = self._accept(rows, drafts, logits, prefill=False)
        observe_step(groups, rows, drafts, outputs, logits.shape[1], time.perf_counter() - proposed,
                     proposed - started, self.faults)
        return outputs

    def _fail_all(self, rows: list[Row], what: str, exc: Exception) -> list[StepOutput]:
        """A failure no row can be blamed for: every row of it ends with ``error`` (and is released)."""
        for row in rows:
            fail_row(row, what, exc)
        return [StepOutput(row.request.request_id, [], row.finish_reason, row) for row in rows]

    def _propose(self, groups: dict[Strategy, list[int]], rows: list[Row]) -> list[Draft]:
        drafts: list[Draft] = [Draft([])] * len(rows)
        for strategy, idx in groups.items():
            requests = [self._draft_request(rows[i]) for i in idx]
            if not any(r.max_draft_tokens for r in requests):
                continue  # nothing to draft this step: a stateful proposer catches up next time
            try:
                got = strategy.proposer.propose(requests)
                check_drafts(strategy.proposer, requests, got, self.model.shape.vocab_size)
            except Exception as exc:  # a plugin fault: these rows go on without drafts
                self.faults.record(strategy, "propose", exc, [rows[i] for i in idx])
                continue
            for i, draft in zip(idx, got):
                drafts[i] = draft
        return drafts

    def _draft_request(self, row: Row) -> DraftRequest:
        remaining = row.request.max_new_tokens - row.num_generated
        room = self.max_model_len - len(row.token_ids)
        return DraftRequest(row.request.request_id, row.token_ids, len(row.request.prompt_token_ids),
                            max(0, min(row.k, remaining - 1, room)), row.request.sampling)

    def _verify(self, rows: list[Row], drafts: list[Draft], logits: torch.Tensor):
        """Emitted tokens and accepted counts per row (a row whose own verification raises fails alone)."""
        def batch(idx: list[int]):
            return verify_input([drafts[i] for i in idx], logits[idx], [rows[i].request.sampling for i in idx],
                                [self._generators(rows[i], logits.shape[1]) for i in idx])

        return verify_each(self.verifier.verify, batch, rows)

    def _accept(self, rows: list[Row], drafts: list[Draft], logits: torch.Tensor,
                prefill: bool) -> list[StepOutput]:
        """Verify ``drafts`` against ``logits`` [B, K + 1, V], extend the rows, roll back the cache."""
        emitted_rows, accepted_rows = self._verify(rows, drafts, logits)
        outcomes: dict[Strategy, list[VerifyOutcome]] = {}
        outputs = []
        for i, (row, draft, emitted, accepted) in enumerate(zip(rows, drafts, emitted_rows, accepted_rows)):
            emitted = emitted[: accepted + 1]
            if not prefill:
                self.cache.lengths[row.slot] += 1 + accepted  # last token + accepted drafts
                row.stats.verify_steps += 1
                self._adapt_k(row, len(draft.token_ids), accepted)
            if emitted and not row.plain:  # (a row that failed its verification emitted nothing)
                outcomes.setdefault(row.strategy, []).append(
                    VerifyOutcome(row.request.request_id, len(draft.token_ids), accepted, tuple(emitted)))
            out = self._extend(row, emitted)
            out.num_draft, out.num_accepted = len(draft.token_ids), min(accepted, len(out.new_token_ids))
            if row.request.logprobs is not None:
                out.logprobs = token_logprobs(logits[i], out.new_token_ids, row.request.logprobs)
            outputs.append(out)
            row.stats.target_forwards += 1
            row.stats.draft_tokens += len(draft.token_ids)
            row.stats.accepted_tokens += out.num_accepted
        self._tell(outcomes, rows)
        return outputs

    def _tell(self, outcomes: dict[Strategy, list[VerifyOutcome]], rows: list[Row]) -> None:
        """Tell each proposer what was kept of its drafts."""
        for strategy, told in outcomes.items():
            try:
                strategy.proposer.on_verified(told)
            except Exception as exc:
                self.faults.record(strategy, "on_verified", exc, [row for row in rows if row.strategy is strategy])

    def _generators(self, row: Row, width: int) -> list[torch.Generator]:
        if row.request.sampling.greedy:
            return []
        first = len(row.token_ids)  # the position the row's next token takes
        return [position_generator(row.request.sampling.seed, first + j, self.model.device) for j in range(width)]

    def _adapt_k(self, row: Row, drafted: int, accepted: int) -> None:
        if row.strategy.adaptive_k and row.strategy.policy is None:
            row.k = next_draft_length(row.k, row.strategy.k, drafted, accepted)

    def _extend(self, row: Row, emitted: list[int]) -> StepOutput:
        """Append emitted tokens, cutting them at EOS, a stop string, max_new_tokens or the context."""
        new: list[int] = []
        for token in emitted:
            new.append(token)
            row.token_ids.append(token)
            row.finish_reason = self._finish(row, token)
            if row.finish_reason:
                break
        return StepOutput(row.request.request_id, new, row.finish_reason, row)

    def _finish(self, row: Row, token: int) -> str | None:
        """Why ``row`` ends with ``token`` just appended (None: it goes on)."""
        try:
            if token in self.eos_token_ids or row.stopper.hit(row.token_ids, len(row.request.prompt_token_ids)):
                return "stop"
        except Exception as exc:
            fail_row(row, "the stop-string check", exc)
            return "error"
        if row.num_generated >= row.request.max_new_tokens or len(row.token_ids) >= self.max_model_len:
            return "length"
        return None

    # ---- convenience ----------------------------------------------------------------------------
    def run(self, requests: Sequence[Request]) -> Iterator[StepOutput]:
        """Add ``requests`` and step until every row has finished, yielding each step's outputs."""
        for request in requests:
            self.add_request(request)
        while self.has_unfinished():
            yield from self.step()
