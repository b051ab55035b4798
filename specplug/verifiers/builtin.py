"""Built-in plugin: the ``rejection`` (default) and ``greedy`` verifiers."""

from specplug.hookspecs import hookimpl
from specplug.verifiers.rejection import GreedyVerifier, RejectionSampler


@hookimpl
def register_verifiers(register):
    register.verifier("rejection", RejectionSampler)
    register.verifier("greedy", GreedyVerifier)
