"""specplug: speculative decoding with pluggable proposers and lossless verification."""

from specplug.hookspecs import hookimpl, hookspec
from specplug.metadata import Draft, DraftRequest, ProposerContext, SamplingParams, VerifyOutcome
from specplug.proposers.base import Proposer
from specplug.verifiers.base import Verifier

__version__ = "0.1.0"

__all__ = [
    "Draft", "DraftRequest", "Proposer", "ProposerContext", "SamplingParams", "Verifier",
    "VerifyOutcome", "hookimpl", "hookspec",
]
