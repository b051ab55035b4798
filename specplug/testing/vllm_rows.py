"""The kit's run of a proposer under the row translation the vLLM adapter uses (``hosting.TokenRows``),
driven as vLLM 0.32's model runner drives its ``custom_class`` hook, with no vLLM installed:

- the batch is a persistent array of rows; a new request takes the lowest free row, and after some
  finish, the last rows move down into the holes (vLLM's ``InputBatch.condense``);
- a new request may spend steps in chunked prefill, passed with no sampled token;
- each step the target verifies every row's last drafts greedily (longest matching prefix, then its
  own token), the hook sees what each row sampled and the row's tokens, and drafts again;
- a finished request is still in the batch at the step it finishes and gone at the next.

Output must equal plain greedy decoding of the same target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from specplug.config import load_config
from specplug.hosting.strategy import Strategy, StrategyTable
from specplug.hosting.token_rows import BatchView, TokenRows
from specplug.proposers.base import Proposer, proposer_name
from specplug.testing.checks import K, MAX_LEN, ROWS, assert_no_faults, full_logits, greedy_prompts

MAX_NEW = 24


@dataclass
class LiveRequest:
    request_id: int
    tokens: list[int]  # prompt + output so far
    max_new: int
    prefill_steps: int  # chunked-prefill steps left, each with no sampled token
    output: list[int] = field(default_factory=list)
    draft: list[int] = field(default_factory=list)  # the hook's draft from the last step

    @property
    def done(self) -> bool:
        return len(self.output) >= self.max_new


def verify_greedily(model, request: LiveRequest) -> list[int]:
    """What the target emits for the request's draft: the draft's longest prefix that greedy decoding
    agrees with, then the target's own next token."""
    targets = full_logits(model, request.tokens + request.draft)[len(request.tokens) - 1:].argmax(-1).tolist()
    accepted = 0
    while accepted < len(request.draft) and request.draft[accepted] == targets[accepted]:
        accepted += 1
    return request.draft[:accepted] + [targets[accepted]]


def plain_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_new):
        tokens.append(int(full_logits(model, tokens)[-1].argmax()))
    return tokens[len(prompt):]


class VllmLikeBatch:
    """vLLM's persistent batch as the hook sees it: ``ROWS`` rows, a token array and per-row counts."""

    def __init__(self, requests: list[LiveRequest]):
        self.waiting = list(requests)
        self.slots: list[LiveRequest | None] = [None] * ROWS
        self.finished: dict[int, list[int]] = {}

    def schedule(self) -> None:
        """Gone requests leave, new ones fill the lowest holes, then the last rows move into the rest."""
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.done:
                self.finished[slot.request_id] = slot.output
                self.slots[i] = None
        for i in range(ROWS):
            if self.slots[i] is None and self.waiting:
                self.slots[i] = self.waiting.pop(0)
        for hole in range(ROWS):
            last = max((i for i, s in enumerate(self.slots) if s is not None), default=-1)
            if self.slots[hole] is None and hole < last:
                self.slots[hole], self.slots[last] = self.slots[last], None

    def run_target(self, model) -> list[list[int]]:
        """One engine step: what every row sampled (``[]`` for an empty row or one still in prefill)."""
        sampled: list[list[int]] = []
        for slot in self.slots:
            if slot is None or slot.prefill_steps > 0:
                if slot is not None:
                    slot.prefill_steps -= 1
                sampled.append([])
                continue
            emitted = verify_greedily(model, slot)  # vLLM's runner does not cut at max_tokens; its scheduler does
            slot.tokens += emitted
            slot.output += emitted[: slot.max_new - len(slot.output)]
            sampled.append(emitted)
        return sampled

    def arrays(self, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        """``num_tokens_no_spec`` [ROWS] and ``token_ids_cpu`` [ROWS, MAX_LEN]; stale ids beyond each count."""
        counts = np.zeros(ROWS, dtype=np.int32)
        tokens = np.array([[rng.randrange(1000) for _ in range(MAX_LEN)] for _ in range(ROWS)], dtype=np.int32)
        for i, slot in enumerate(self.slots):
            if slot is not None:
                counts[i] = len(slot.tokens)
                tokens[i, : len(slot.tokens)] = slot.tokens
        return counts, tokens

    def busy(self) -> bool:
        return bool(self.waiting) or any(s is not None for s in self.slots)


def check_under_vllm_row_translation(proposer: Proposer, model, seed: int) -> None:
    """``proposer`` (the object the embedded engine just ran) inside the vLLM adapter: output equals
    plain greedy decoding, with adaptive_k moving each row's budget."""
    rng = random.Random(seed)
    prompts = greedy_prompts(seed + 1)
    requests = [LiveRequest(i, list(p), MAX_NEW - 3 * (i % 3), rng.choice([0, 0, 1, 2])) for i, p in enumerate(prompts)]
    table = StrategyTable({"kit": Strategy(proposer_name(proposer), proposer, K, adaptive_k=True)}, "kit",
                          load_config())
    translator = TokenRows(MAX_LEN, model.shape.vocab_size, K)
    batch = VllmLikeBatch(requests)
    name = proposer_name(proposer)
    while batch.busy():
        batch.schedule()
        sampled = batch.run_target(model)
        counts, tokens = batch.arrays(rng)
        try:
            drafts = [d.token_ids for d in translator.step(table, BatchView(sampled, counts, tokens))]
        except Exception as error:  # noqa: BLE001 - the kit names what broke, whatever it is
            raise AssertionError(f"{name}: failed under the vLLM adapter's row translation: "
                                 f"{type(error).__name__}: {error}") from error
        for slot, draft in zip(batch.slots, drafts):
            if slot is not None:
                slot.draft = draft
        assert_no_faults(name, translator.drafting.faults, "under the vLLM adapter's row translation")
    for request_id, prompt in enumerate(prompts):
        expected = plain_greedy(model, prompt, requests[request_id].max_new)
        got = batch.finished[request_id]
        assert got == expected, (f"{name}: under the vLLM adapter's row translation, request {request_id} "
                                 f"differs from plain greedy decoding: {got} vs {expected}")
