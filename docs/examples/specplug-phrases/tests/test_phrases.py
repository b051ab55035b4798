"""The example package's own tests: specplug's conformance kit on the proposer (a pytest fixture that
specplug installs), with phrases given as token ids so that no tokenizer is needed."""

from specplug_phrases import PhrasesProposer


def test_phrases_passes_the_conformance_kit(proposer_conformance):
    proposer_conformance(lambda context: PhrasesProposer([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]], min_match=2))
