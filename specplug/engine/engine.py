"""The embedded engine's decode loop: admit rows, prefill, then speculative steps until done.

One step for the running rows (B rows, packed in cache slots 0..B-1):
  1. propose: the proposer drafts up to k tokens per row from the row's tokens so far;
  2. verify: one target forward over [last token, drafts] (T = K + 1 positions per row, right-padded);
  3. accept: the verifier keeps a prefix of each row's drafts and adds one recovered/bonus token;
  4. roll back: the row's cache length moves to cover only the last token and the accepted drafts.
Plain autoregressive decoding is the same step with no drafts (proposer ``none``).
Rows join (``add_request``) and leave (finish or ``abort``) between steps.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from specplug.engine.stopping import StopChecker
from specplug.errors import SpecplugError
from specplug.metadata import Draft, DraftRequest, SamplingParams, VerifyInput, VerifyOutcome
from specplug.models.llama import CompactLlama
from specplug.models.runner import StepRunner
from specplug.proposers.base import Proposer, check_drafts, next_draft_length
from specplug.sampling import make_generator
from specplug.verifiers.base import Verifier


@dataclass
class Request:
    request_id: Hashable
    prompt_token_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before them


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
    k: int  # this row's current draft budget (changes only with adaptive_k)
    stats: SequenceStats = field(default_factory=SequenceStats)
    finish_reason: str | None = None

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - len(self.request.prompt_token_ids)


@dataclass
class StepOutput:
    request_id: Hashable
    new_token_ids: list[int]
    finish_reason: str | None  # "stop", "length" or None while running
    row: Row


class Engine:
    def __init__(self, model: CompactLlama, tokenizer, proposer: Proposer, verifier: Verifier,
                 num_speculative_tokens: int, max_batch_size: int = 1, max_model_len: int = 2048,
                 seed: int | None = 0, eos_token_ids: Sequence[int] = (), adaptive_k: bool = False,
                 enforce_eager: bool = False, padded_steps: bool | None = None, compiled: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.proposer, self.verifier = proposer, verifier
        self.k, self.adaptive_k = num_speculative_tokens, adaptive_k
        self.max_batch_size = max_batch_size
        self.max_model_len = min(max_model_len, model.shape.max_positions - num_speculative_tokens)
        # spare slots and positions: padded rows and right-padded widths never land on a real entry
        self.runner = StepRunner.create(model, max_batch_size, num_speculative_tokens + 1, self.max_model_len,
                                        enforce_eager=enforce_eager, padded=padded_steps, compiled=compiled)
        self.cache = self.runner.cache
        self.generator = make_generator(seed, model.device)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: deque[Request] = deque()
        self.rows: list[Row] = []  # rows[i] lives in cache slot i

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
        self.proposer.release(row.request.request_id)

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

    def _prefill(self, requests: list[Request]) -> list[StepOutput]:
        first = len(self.rows)
        rows = [Row(r, first + i, list(r.prompt_token_ids), StopChecker(self.tokenizer, r.stop), self.k)
                for i, r in enumerate(requests)]
        for row in rows:
            row.stats.started = time.perf_counter()
        self.rows.extend(rows)
        prompts = [r.prompt_token_ids for r in requests]
        longest = max(map(len, prompts))
        input_ids = torch.tensor([p + [0] * (longest - len(p)) for p in prompts], device=self.model.device)
        positions = torch.arange(longest, device=input_ids.device).expand(len(rows), -1)
        last = torch.tensor([[len(p) - 1] for p in prompts], device=input_ids.device)
        logits = self.model(input_ids, positions, self.cache, slice(first, first + len(rows)), last, upto=longest)
        for row, prompt in zip(rows, prompts):
            self.cache.lengths[row.slot] = len(prompt)
        return self._accept(rows, [Draft([]) for _ in rows], logits, prefill=True)

    def _speculative_step(self, rows: list[Row]) -> list[StepOutput]:
        requests = [self._draft_request(row) for row in rows]
        drafts = self.proposer.propose(requests)
        check_drafts(self.proposer, requests, drafts, self.model.shape.vocab_size)
        logits = self.runner.run([[row.token_ids[-1], *d.token_ids] for row, d in zip(rows, drafts)],
                                 [self.cache.lengths[row.slot] for row in rows])
        return self._accept(rows, drafts, logits, prefill=False)

    def _draft_request(self, row: Row) -> DraftRequest:
        remaining = row.request.max_new_tokens - row.num_generated
        room = self.max_model_len - len(row.token_ids)
        return DraftRequest(row.request.request_id, row.token_ids, len(row.request.prompt_token_ids),
                            max(0, min(row.k, remaining - 1, room)), row.request.sampling)

    def _accept(self, rows: list[Row], drafts: list[Draft], logits: torch.Tensor,
                prefill: bool) -> list[StepOutput]:
        """Verify ``drafts`` against ``logits`` [B, K + 1, V], extend the rows, roll back the cache."""
        batch = verify_input(drafts, logits, [row.request.sampling for row in rows], self.generator)
        result = self.verifier.verify(batch)
        emitted_rows = result.output_token_ids.tolist()
        outcomes, outputs = [], []
        for row, draft, emitted, accepted in zip(rows, drafts, emitted_rows, result.num_accepted.tolist()):
            emitted = emitted[: accepted + 1]
            if not prefill:
                self.cache.lengths[row.slot] += 1 + accepted  # last token + accepted drafts
                row.stats.verify_steps += 1
                self._adapt_k(row, len(draft.token_ids), accepted)
            outcomes.append(VerifyOutcome(row.request.request_id, len(draft.token_ids), accepted,
                                          tuple(emitted)))
            outputs.append(self._extend(row, emitted))
            row.stats.target_forwards += 1
            row.stats.draft_tokens += len(draft.token_ids)
            row.stats.accepted_tokens += min(accepted, len(outputs[-1].new_token_ids))  # cut at a stop
        self.proposer.on_verified(outcomes)
        return outputs

    def _adapt_k(self, row: Row, drafted: int, accepted: int) -> None:
        if self.adaptive_k:
            row.k = next_draft_length(row.k, self.k, drafted, accepted)

    def _extend(self, row: Row, emitted: list[int]) -> StepOutput:
        """Append emitted tokens, cutting them at EOS, a stop string, max_new_tokens or the context."""
        new: list[int] = []
        for token in emitted:
            new.append(token)
            row.token_ids.append(token)
            if token in self.eos_token_ids or row.stopper.hit(row.token_ids, len(row.request.prompt_token_ids)):
                row.finish_reason = "stop"
            elif (row.num_generated >= row.request.max_new_tokens
                  or len(row.token_ids) >= self.max_model_len):
                row.finish_reason = "length"
            if row.finish_reason:
                break
        return StepOutput(row.request.request_id, new, row.finish_reason, row)

    # ---- convenience ----------------------------------------------------------------------------
    def run(self, requests: Sequence[Request]) -> Iterator[StepOutput]:
        """Add ``requests`` and step until every row has finished, yielding each step's outputs."""
        for request in requests:
            self.add_request(request)
        while self.has_unfinished():
            yield from self.step()


def verify_input(drafts: list[Draft], logits: torch.Tensor, sampling: list[SamplingParams],
                 generator: torch.Generator) -> VerifyInput:
    """Pack per-row drafts into the verifier's padded tensors."""
    device = logits.device
    width = logits.shape[1] - 1
    token_ids = torch.zeros((len(drafts), width), dtype=torch.long, device=device)
    for i, draft in enumerate(drafts):
        token_ids[i, : len(draft.token_ids)] = torch.tensor(draft.token_ids, dtype=torch.long)
    num_draft = torch.tensor([len(d.token_ids) for d in drafts], device=device)
    probs = None
    if any(d.probs is not None for d in drafts):
        # rows without probabilities are deterministic drafts: one-hot
        probs = torch.nn.functional.one_hot(token_ids, logits.shape[-1]).float()
        for i, draft in enumerate(drafts):
            if draft.probs is not None and draft.token_ids:
                probs[i, : len(draft.token_ids)] = draft.probs.to(device=device, dtype=torch.float32)
    return VerifyInput(logits, token_ids, num_draft, probs, sampling, generator)
