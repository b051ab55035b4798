"""Built-in plugin: ``none``, which proposes nothing: plain autoregressive decoding, the baseline."""

from __future__ import annotations

from collections.abc import Sequence

from specplug.hookspecs import hookimpl
from specplug.metadata import Draft, DraftRequest, ProposerContext
from specplug.options import NoOptions
from specplug.proposers.base import Proposer


NAME = "none"  # plain decoding: the baseline every speed-up is measured against (``LLM.plain``)


class NoProposer(Proposer):
    name = NAME

    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        return [Draft([]) for _ in requests]


def make_none(context: ProposerContext, options: NoOptions) -> NoProposer:
    return NoProposer()


@hookimpl
def register_proposers(register):
    register.proposer(NAME, make_none, options=NoOptions)
