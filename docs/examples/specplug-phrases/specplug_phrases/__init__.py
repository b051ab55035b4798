"""specplug plugin: ``phrases``, draft the rest of a phrase the user listed in the config.

    proposer:
      name: phrases
      phrases: [" Apache License, Version 2.0", " Returns a list of"]
      min_match: 2

When the last tokens of a row (``min_match`` of them or more) equal a run of tokens inside a phrase,
the tokens that follow that run in the phrase are the draft. The longest match wins.
"""

from __future__ import annotations

from collections.abc import Sequence

from specplug import Draft, DraftRequest, Proposer, ProposerContext, hookimpl
from specplug.errors import ConfigError


class PhrasesProposer(Proposer):
    name = "phrases"

    def __init__(self, phrases: list[list[int]], min_match: int):
        self.phrases = phrases  # token ids of each phrase
        self.min_match = min_match
        self.longest = max(len(p) for p in phrases)

    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        return [Draft(self.lookup(r)) for r in requests]  # probs=None: deterministic drafts

    def lookup(self, request: DraftRequest) -> list[int]:
        if request.max_draft_tokens <= 0:
            return []
        tail = [int(t) for t in request.token_ids[-(self.longest - 1):]]
        for n in range(len(tail), self.min_match - 1, -1):  # longest match first
            for phrase in self.phrases:
                for start in range(len(phrase) - n):  # the run must leave a token to draft
                    if phrase[start : start + n] == tail[-n:]:
                        return phrase[start + n : start + n + request.max_draft_tokens]
        return []


def make_phrases(context: ProposerContext, *, phrases: list[str] = (), min_match: int = 2) -> PhrasesProposer:
    """Factory: the keyword-only parameters are the options ``proposer:`` accepts."""
    if not (isinstance(min_match, int) and not isinstance(min_match, bool) and min_match >= 1):
        raise ConfigError(f"proposer 'phrases' needs min_match to be an integer >= 1 (got {min_match!r})")
    if not (isinstance(phrases, list) and phrases and all(isinstance(p, str) and p for p in phrases)):
        raise ConfigError(
            f"proposer 'phrases' needs a non-empty list of strings as phrases (got {phrases!r}); "
            "e.g. --set 'proposer.phrases=[\" Apache License, Version 2.0\"]'"
        )
    if context.tokenizer is None:
        raise ConfigError("proposer 'phrases' needs an engine with a tokenizer to encode its phrases")
    encoded = [context.tokenizer.encode(p, add_special_tokens=False) for p in phrases]
    for text, ids in zip(phrases, encoded):
        if len(ids) <= min_match:
            raise ConfigError(
                f"proposer 'phrases': phrase {text!r} is {len(ids)} tokens, so it can never draft with "
                f"min_match={min_match}; make it longer or lower proposer.min_match"
            )
    return PhrasesProposer(encoded, min_match)


@hookimpl
def register_proposers(register):
    register.proposer("phrases", make_phrases)
