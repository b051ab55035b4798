"""specplug plugin: ``phrases``, draft the rest of a phrase the user listed in the config.

    proposer:
      name: phrases
      phrases: [" Apache License, Version 2.0", " Returns a list of"]
      min_match: 2

When the last tokens of a row (``min_match`` of them or more) equal a run of tokens inside a phrase,
the tokens that follow that run in the phrase are the draft. The longest match wins.

The package also adds a command, ``specplug phrases-check --config FILE``: how the configured
phrases tokenize, and how much of each can ever be drafted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from specplug.api import (API_VERSION, ConfigError, Draft, DraftRequest, Proposer, ProposerContext,
                          add_config_args, hookimpl, load_config, load_registry, load_tokenizer, option,
                          resolve_model)

specplug_api_version = API_VERSION  # the plugin interface this package is written for (specplug.api)


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


@dataclass(frozen=True)
class PhrasesOptions:
    """The options ``proposer:`` accepts, checked by specplug before the factory runs."""

    phrases: list[str] = option(help="the phrases to complete, as text (at least one)")  # required
    min_match: int = option(2, "tokens of a phrase the row must end with before it drafts the rest", ge=1)

    def check(self) -> str | None:
        if not self.phrases or not all(self.phrases):
            return ("phrases must be a non-empty list of non-empty strings; "
                    "e.g. --set 'proposer.phrases=[\" Apache License, Version 2.0\"]'")
        return None


def make_phrases(context: ProposerContext, options: PhrasesOptions) -> PhrasesProposer:
    """Factory: ``options`` has passed the schema's checks; what needs the tokenizer is checked here."""
    if context.tokenizer is None:
        raise ConfigError("proposer 'phrases' needs an engine with a tokenizer to encode its phrases")
    encoded = [context.tokenizer.encode(p, add_special_tokens=False) for p in options.phrases]
    for text, ids in zip(options.phrases, encoded):
        if len(ids) <= options.min_match:
            raise ConfigError(
                f"proposer 'phrases': phrase {text!r} is {len(ids)} tokens, so it can never draft with "
                f"min_match={options.min_match}; make it longer or lower proposer.min_match"
            )
    return PhrasesProposer(encoded, options.min_match)


@hookimpl
def register_proposers(register):
    register.proposer("phrases", make_phrases, options=PhrasesOptions)


def configure_check(parser) -> None:
    add_config_args(parser, max_new_tokens=False)


def run_check(args) -> int:
    """Print each configured phrase's token count and the most it can draft at once."""
    config = load_config(args.config, args.overrides)
    if config.proposer.name != "phrases":
        raise ConfigError(f"the config's proposer is '{config.proposer.name}': set proposer.name=phrases")
    options = load_registry().check_choice("proposer", "phrases", config.proposer.options)
    tokenizer = load_tokenizer(resolve_model(config.model))
    for text in options.phrases:
        n = len(tokenizer.encode(text, add_special_tokens=False))
        print(f"{text!r}: {n} tokens; drafts up to {max(0, n - options.min_match)} "
              f"after {options.min_match} matched")
    return 0


@hookimpl
def register_commands(register):
    register.command("phrases-check", "show how the configured phrases tokenize and what they can draft",
                     configure_check, run_check)
