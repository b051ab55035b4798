"""The embedded engine's decode loop: admit rows, prefill, then speculative steps until done.

One step for the running rows (B rows, packed in cache slots 0..B-1):
  1. propose: the proposer drafts up to k tokens per row from the row's tokens so far;
  2. verify: one target forward over [last token, drafts] (T = K + 1 positions per row, right-padded);
  3. accept: the verifier keeps a prefix of each row's drafts and adds one recovered/bonus token;
  4. roll back: the row's cache length moves to cover only the last token and the accepted drafts.
Plain autoregressive decoding is the same step with no drafts (proposer ``none``).
Rows join (``add_request``) and leave (finish or ``abort``) between steps. Each row drafts with its own
``Strategy`` (the engine's default unless the request names one); the hosting layer's ``Drafting`` does
all of a step's drafting (budgets, proposals, cuts, what was accepted, costs), as it does inside vLLM and
TensorRT-LLM. A row's random draws are keyed by its seed and position (``position_generator``), so a
seeded request gives the same tokens whatever else shares the batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence

import torch

from specplug.engine.batch import token_logprobs, verify_input
from specplug.engine.faults import fail_row, verify_each
from specplug.engine.request import EngineRow, Request, StepOutput
from specplug.engine.stopping import StopChecker
from specplug.errors import SpecplugError
from specplug.hosting.drafting import Drafting
from specplug.hosting.strategy import Strategy, StrategyTable, hand_over
from specplug.metadata import Draft, DraftRequest
from specplug.models.llama import CompactLlama
from specplug.models.runner import StepRunner
from specplug.proposers.base import Proposer, proposer_name
from specplug.sampling import make_generator, position_generator
from specplug.verifiers.base import Verifier

__all__ = ["Engine", "EngineRow", "Request", "StepOutput"]

SEED_RANGE = 2**62  # seeds drawn for requests that bring none


class Engine:
    def __init__(self, model: CompactLlama, tokenizer, proposer: Proposer, verifier: Verifier,
                 num_speculative_tokens: int, max_batch_size: int = 1, max_model_len: int = 2048,
                 seed: int | None = 0, eos_token_ids: Sequence[int] = (), adaptive_k: bool = False,
                 enforce_eager: bool = False, padded_steps: bool | None = None, compiled: bool = False,
                 max_speculative_tokens: int | None = None):
        self.verifier = verifier
        self.strategy = Strategy(proposer_name(proposer), proposer, num_speculative_tokens, adaptive_k)
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
        self.rows: list[EngineRow] = []  # rows[i] lives in cache slot i
        self.drafting = Drafting(model.shape.vocab_size, self.max_k)
        self.faults = self.drafting.faults

    @property
    def proposer(self) -> Proposer:
        return self.strategy.proposer

    def check_strategy(self, strategy: Strategy) -> None:
        if strategy.k > self.max_k:
            raise SpecplugError(f"strategy '{strategy.name}' drafts up to {strategy.k} tokens; this engine was "
                                f"started for at most {self.max_k}: lower its num_speculative_tokens or restart")

    def swap(self, table: StrategyTable) -> int:
        """Serve ``table`` from the next step: its default for new requests, and rows in flight moved to its
        strategy of the same name (``hosting.strategy.hand_over``). How many rows moved."""
        for strategy in table.strategies.values():
            self.check_strategy(strategy)
        self.strategy = table.default
        self.waiting = deque(dataclasses.replace(r, strategy=table.strategies.get(r.strategy.name, table.default))
                             if r.strategy is not None else r for r in self.waiting)
        return hand_over(self.rows, table, self.drafting.release)

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

    def _release(self, row: EngineRow) -> None:
        """Free the row's slot, moving the last row into it so live slots stay packed."""
        self.cache.release(self.rows, row)
        self.drafting.release(row)

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

    def _new_row(self, request: Request, slot: int) -> EngineRow:
        if request.sampling.seed is None:  # the row's draws (and its drafter's) still need one seed
            seed = int(torch.randint(SEED_RANGE, (1,), generator=self.seeds))
            request = dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, seed=seed))
        row = EngineRow(seq_id=request.request_id, strategy=request.strategy or self.strategy,
                        named=request.strategy is not None,
                        num_prompt_tokens=len(request.prompt_token_ids), request=request, slot=slot,
                        token_ids=list(request.prompt_token_ids), stopper=StopChecker(self.tokenizer, request.stop))
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
            logits, features = self.model.forward_features(input_ids, positions, self.cache,
                                                           slice(first, first + len(rows)),
                                                           self.drafting.feature_layers(rows), last, upto=longest)
        except Exception as exc:
            return self._fail_all(rows, "the target's prefill", exc)
        for row, prompt in zip(rows, prompts):
            self.cache.lengths[row.slot] = len(prompt)
        self.drafting.features(rows, [0] * len(rows), [len(p) for p in prompts], features)
        return self._accept(rows, [Draft([]) for _ in rows], logits, prefill=True)

    def _speculative_step(self, rows: list[EngineRow]) -> list[StepOutput]:
        started = time.perf_counter()
        drafts = self.drafting.draft(rows, self._draft_request)
        proposed = time.perf_counter()
        try:
            logits = self.runner.run([[row.token_ids[-1], *d.token_ids] for row, d in zip(rows, drafts)],
                                     [self.cache.lengths[row.slot] for row in rows],
                                     layers=self.drafting.feature_layers(rows))
        except Exception as exc:
            return self._fail_all(rows, "the target's forward", exc)
        starts = [len(row.token_ids) - 1 for row in rows]  # the position of each row's last token
        outputs = self._accept(rows, drafts, logits, prefill=False)
        self.drafting.features(rows, starts, [1 + out.num_accepted for out in outputs], self.runner.features)
        self.drafting.observe(rows, drafts, [out.num_accepted for out in outputs], len(rows), logits.shape[1],
                              time.perf_counter() - proposed, proposed - started)
        return outputs

    def _fail_all(self, rows: list[EngineRow], what: str, exc: Exception) -> list[StepOutput]:
        """A failure no row can be blamed for: every row of it ends with ``error`` (and is released)."""
        for row in rows:
            fail_row(row, what, exc)
        return [StepOutput(row.request.request_id, [], row.finish_reason, row) for row in rows]

    def _draft_request(self, row: EngineRow) -> DraftRequest:
        remaining = row.request.max_new_tokens - row.num_generated
        room = self.max_model_len - len(row.token_ids)
        return DraftRequest(row.request.request_id, row.token_ids, len(row.request.prompt_token_ids),
                            max(0, min(row.k, remaining - 1, room)), row.request.sampling)

    def _verify(self, rows: list[EngineRow], drafts: list[Draft], logits: torch.Tensor):
        """Emitted tokens and accepted counts per row (a row whose own verification raises fails alone)."""
        def batch(idx: list[int]):
            return verify_input([drafts[i] for i in idx], logits[idx], [rows[i].request.sampling for i in idx],
                                [self._generators(rows[i], logits.shape[1]) for i in idx])

        return verify_each(self.verifier.verify, batch, rows)

    def _accept(self, rows: list[EngineRow], drafts: list[Draft], logits: torch.Tensor,
                prefill: bool) -> list[StepOutput]:
        """Verify ``drafts`` against ``logits`` [B, K + 1, V], extend the rows, roll back the cache."""
        emitted_rows, accepted_rows = self._verify(rows, drafts, logits)
        outputs, told = [], []
        for i, (row, draft, emitted, accepted) in enumerate(zip(rows, drafts, emitted_rows, accepted_rows)):
            emitted = emitted[: accepted + 1]
            if not prefill:
                self.cache.lengths[row.slot] += 1 + accepted  # last token + accepted drafts
                row.stats.verify_steps += 1
            if emitted:  # (a row that failed its verification emitted nothing)
                told.append((row, accepted, tuple(emitted)))
            out = self._extend(row, emitted)
            out.num_draft, out.num_accepted = len(draft.token_ids), min(accepted, len(out.new_token_ids))
            if row.request.logprobs is not None:
                out.logprobs = token_logprobs(logits[i], out.new_token_ids, row.request.logprobs)
            outputs.append(out)
            row.stats.target_forwards += 1
            row.stats.draft_tokens += len(draft.token_ids)
            row.stats.accepted_tokens += out.num_accepted
        if told:
            told_rows, told_accepted, told_emitted = zip(*told)
            self.drafting.verified(told_rows, told_accepted, told_emitted)
        return outputs

    def _generators(self, row: EngineRow, width: int) -> list[torch.Generator]:
        if row.request.sampling.greedy:
            return []
        first = len(row.token_ids)  # the position the row's next token takes
        return [position_generator(row.request.sampling.seed, first + j, self.model.device) for j in range(width)]

    def _extend(self, row: EngineRow, emitted: list[int]) -> StepOutput:
        """Append emitted tokens, cutting them at EOS, a stop string, max_new_tokens or the context."""
        new: list[int] = []
        for token in emitted:
            new.append(token)
            row.token_ids.append(token)
            row.finish_reason = self._finish(row, token)
            if row.finish_reason:
                break
        return StepOutput(row.request.request_id, new, row.finish_reason, row)

    def _finish(self, row: EngineRow, token: int) -> str | None:
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
