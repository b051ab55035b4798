"""Built-in plugin: the ``rejection`` (default) and ``greedy`` verifiers."""

from specplug.hookspecs import hookimpl
from specplug.options import NoOptions
from specplug.registry import VerifierCapabilities
from specplug.verifiers.rejection import GreedyVerifier, RejectionSampler


def make_rejection(options: NoOptions) -> RejectionSampler:
    return RejectionSampler()


def make_greedy(options: NoOptions) -> GreedyVerifier:
    return GreedyVerifier()


@hookimpl
def register_verifiers(register):
    register.verifier("rejection", make_rejection, options=NoOptions, capabilities=VerifierCapabilities(sampling=True))
    register.verifier("greedy", make_greedy, options=NoOptions, capabilities=VerifierCapabilities(sampling=False))
