from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence

from specplug.metadata import Draft, DraftRequest, VerifyOutcome


class Proposer(ABC):
    """Drafts up to k tokens for every row of a batch.

    The same object runs in the embedded engine and inside the engine adapters: it sees rows only
    through ``DraftRequest`` (tokens so far, a stable ``seq_id``) and never touches engine state.
    Rows join and leave between steps; ``release`` tells a stateful proposer a row is gone.
    """

    name: str = "proposer"

    @abstractmethod
    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        """Return one ``Draft`` per request, in order (an empty draft is allowed)."""

    def on_verified(self, outcomes: Sequence[VerifyOutcome]) -> None:  # noqa: B027 - optional hook
        """Told which of its tokens were accepted, so that a stateful proposer can roll back."""

    def release(self, seq_id: Hashable) -> None:  # noqa: B027 - optional hook
        """Forget everything kept for ``seq_id`` (the row finished or was cancelled)."""
