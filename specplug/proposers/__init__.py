"""Proposers: cheap guesses of the next k tokens, verified by the target."""

from specplug.proposers.base import Proposer

__all__ = ["Proposer"]
