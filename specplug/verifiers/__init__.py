"""Verifiers: the acceptance rule applied to the target's logits over the k + 1 verified positions."""

from specplug.verifiers.base import Verifier
from specplug.verifiers.rejection import GreedyVerifier, RejectionSampler

__all__ = ["GreedyVerifier", "RejectionSampler", "Verifier"]
