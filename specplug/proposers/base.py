from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence

import torch

from specplug.errors import SpecplugError
from specplug.metadata import Draft, DraftRequest, VerifyOutcome


class Proposer(ABC):
    """Drafts up to k tokens for every row of a batch.

    The same object runs in the embedded engine and inside the engine adapters: it sees rows only
    through ``DraftRequest`` (tokens so far, a stable ``seq_id``) and never touches engine state.
    Rows join and leave between steps; ``release`` tells a stateful proposer a row is gone.
    """

    @abstractmethod
    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        """Return one ``Draft`` per request, in order (an empty draft is allowed)."""

    def on_verified(self, outcomes: Sequence[VerifyOutcome]) -> None:  # noqa: B027 - optional hook
        """Told which of its tokens were accepted, so that a stateful proposer can roll back."""

    def release(self, seq_id: Hashable) -> None:  # noqa: B027 - optional hook
        """Forget everything kept for ``seq_id`` (the row finished or was cancelled)."""

    # The target's layers whose input features (residual stream) this proposer drafts from, as vLLM's
    # EAGLE-3 aux hidden-state layer ids; () for none. A host that can supply them calls
    # ``on_target_features`` after every target forward; one that cannot refuses the proposer.
    feature_layers: tuple[int, ...] = ()

    def on_target_features(self, seq_id: Hashable, first_position: int,  # noqa: B027 - optional hook
                           features: torch.Tensor) -> None:
        """The target's features ([m, len(feature_layers) * hidden], layers concatenated in order) at the
        row's positions ``first_position`` .. ``first_position + m - 1``, whose tokens are now final."""


def token_list(token_ids: Sequence[int]) -> list[int]:
    """A row's tokens as a list of ints, whether the host passed a list or a numpy array (vLLM)."""
    return token_ids.tolist() if hasattr(token_ids, "tolist") else [int(t) for t in token_ids]


def extends(seen: Sequence[int], token_ids: Sequence[int]) -> bool:
    """Whether ``token_ids`` carries on from the ``seen`` tokens a proposer kept for a row (checked at the
    last of them: a row only ever grows, or is a new request under a reused id)."""
    return len(token_ids) >= len(seen) and (not seen or int(token_ids[len(seen) - 1]) == seen[-1])


def feature_layers_of(proposer: Proposer) -> tuple[int, ...]:
    """The target layers ``proposer`` drafts from (() for none, and for a proposer that does not derive from
    ``Proposer``: a plugin's factory may return any object with ``propose``)."""
    return tuple(getattr(proposer, "feature_layers", ()))


def proposer_name(proposer: Proposer) -> str:
    """The name a proposer goes by in messages: its ``name``, else its class's."""
    return getattr(proposer, "name", type(proposer).__name__)


def check_drafts(proposer: Proposer, requests: Sequence[DraftRequest], drafts: Sequence[Draft],
                 vocab: int) -> None:
    """Reject malformed proposer output with an error that names the proposer."""
    name = proposer_name(proposer)
    if len(drafts) != len(requests):
        raise SpecplugError(f"proposer '{name}' returned {len(drafts)} drafts for {len(requests)} rows")
    for request, draft in zip(requests, drafts):
        n = len(draft.token_ids)
        if n > request.max_draft_tokens:
            raise SpecplugError(f"proposer '{name}' drafted {n} tokens for a row that allows "
                                f"{request.max_draft_tokens}")
        if any(not 0 <= t < vocab for t in draft.token_ids):
            raise SpecplugError(f"proposer '{name}' drafted a token id outside the vocabulary (0..{vocab - 1})")
        if draft.probs is not None and tuple(draft.probs.shape) != (n, vocab):
            raise SpecplugError(f"proposer '{name}' returned draft probs of shape {tuple(draft.probs.shape)}; "
                                f"expected ({n}, {vocab})")
        if draft.confidence is not None and (len(draft.confidence) != n
                                             or not all(0.0 <= c <= 1.0 for c in draft.confidence)):
            raise SpecplugError(f"proposer '{name}' returned a draft confidence that is not {n} numbers in [0, 1]")


def next_draft_length(current: int, k: int, drafted: int, accepted: int) -> int:
    """A row's next draft budget from its last step, as HF assisted generation's heuristic: two more
    after a fully accepted draft, one fewer after a rejection, always within 1..k."""
    if not drafted:
        return current
    return min(k, current + 2) if accepted == drafted else max(1, current - 1)
