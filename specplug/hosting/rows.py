"""``Row``: what a host tracks of one request between steps, whatever engine it runs in.

Five kinds of "row" meet in specplug; this is the only one a host keeps:
- ``hosting.Row``: one request as its host sees it (its strategy, budget, last draft);
- ``engine.EngineRow``: the embedded engine's running request, a ``Row`` with a KV-cache slot;
- a batch row: a position in an engine's batch (vLLM's ``InputBatch`` index), which moves as requests come
  and go; ``TokenRows`` maps them to ``Row``s;
- ``DraftRequest``: what a proposer is shown of a row at one step;
- ``model_drafter.DrafterSlot``: a model drafter's own KV-cache slot for a row.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from specplug.hosting.strategy import Strategy
from specplug.metadata import VerifyOutcome
from specplug.proposers.base import next_draft_length


@dataclass(kw_only=True, eq=False)
class Row:
    seq_id: Hashable  # stable for the request's life; proposers key their state by it
    strategy: Strategy
    num_prompt_tokens: int
    named: bool = False  # its request named its strategy (else it took the default, and follows a new default)
    k: int = -1  # this row's draft budget (moves with adaptive_k or the strategy's policy); -1: the strategy's k
    plain: bool = False  # its strategy failed: it decodes without drafts to the end
    num_draft: int = 0  # tokens drafted for it at its last step, not yet verified
    length: int = 0  # tokens it held when last drafted for (what the engine emitted comes after them)

    def __post_init__(self):
        if self.k < 0:
            self.k = self.strategy.k

    def verified(self, accepted: int, emitted: tuple[int, ...]) -> VerifyOutcome:
        """What the engine kept of the row's last draft, for its proposer; the budget moves with adaptive_k."""
        outcome = VerifyOutcome(self.seq_id, self.num_draft, accepted, emitted)
        if self.strategy.adaptive_k and self.strategy.policy is None:
            self.k = next_draft_length(self.k, self.strategy.k, self.num_draft, accepted)
        self.num_draft = 0
        return outcome
