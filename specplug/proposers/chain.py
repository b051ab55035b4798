"""The draft chain every model drafter runs (``draft_model``, ``layerskip``, ``eagle3``): each step, every
running row's next token is picked from its draft logits, and a row stops at its budget or, after its
first token, where the draft's confidence in the next one falls below the threshold.

Greedy rows draft the argmax with no probabilities (a one-hot draft, as the verifier expects); sampled
rows draw from the draft's distribution under the row's own temperature / top-k / top-p with the row's
own generator, and keep that distribution, so rejection sampling stays lossless.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from specplug.metadata import Draft, DraftRequest
from specplug.sampling import target_probs


def pick(request: DraftRequest, logits: torch.Tensor, generator: torch.Generator | None,
         confidence: bool = True) -> tuple[int, torch.Tensor | None, float]:
    """The next draft token from draft ``logits`` [V]: (token, the distribution [V] it was drawn from or None
    for greedy, the draft's probability of it; 1.0 for greedy unless ``confidence``)."""
    if request.sampling.greedy:
        token = int(logits.argmax())
        return token, None, float(logits.softmax(-1)[token]) if confidence else 1.0
    q = target_probs(logits[None, None], [request.sampling])[0, 0]
    token = int(torch.multinomial(q, 1, generator=generator))
    return token, q, float(q[token])


@dataclass
class Chain:
    """What a drafter has drafted so far for each of its requests (index i: requests[i])."""

    requests: Sequence[DraftRequest]
    threshold: float = 0.0  # confidence below which a row stops (after its first token)
    tokens: list[list[int]] = field(init=False)
    probs: list[list[torch.Tensor]] = field(init=False)  # [V] each, sampled rows only
    confidence: list[list[float]] = field(init=False)

    def __post_init__(self):
        self.tokens = [[] for _ in self.requests]
        self.probs = [[] for _ in self.requests]
        self.confidence = [[] for _ in self.requests]

    def extend(self, running: list[int], next_token: Callable[[int], tuple[int, torch.Tensor | None, float]]
               ) -> list[int]:
        """One step: ``next_token(i)`` for each running row; the rows that go on."""
        still = []
        for i in running:
            token, q, sure = next_token(i)
            if self.tokens[i] and sure < self.threshold:
                continue
            self.tokens[i].append(token)
            self.confidence[i].append(min(1.0, max(0.0, sure)))
            if q is not None:
                self.probs[i].append(q)
            if len(self.tokens[i]) < self.requests[i].max_draft_tokens:
                still.append(i)
        return still

    def drafts(self, with_confidence: bool) -> list[Draft]:
        return [Draft(t, torch.stack(p) if p else None, c if with_confidence else None)
                for t, p, c in zip(self.tokens, self.probs, self.confidence)]
