"""The conformance kit (specplug.testing) passes on every built-in proposer and fails on broken ones."""

from __future__ import annotations

import shutil

import pytest
import torch

from specplug.metadata import Draft
from specplug.proposers.base import Proposer
from specplug.testing import VOCAB, check_proposer, make_factory, tiny_model


@pytest.mark.parametrize("name, options", [("none", {}), ("ngram", {"min_n": 2, "max_n": 3}),
                                           ("layerskip", {"skip_mlp": [1]})])
def test_the_kit_passes_on_the_built_ins(name, options):
    check_proposer(name, options)


def test_the_kit_passes_on_draft_model(tmp_path, llm):
    """A tiny draft saved as an HF directory (with the real tokenizer's files beside it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (llm.model_dir / name).exists():
            shutil.copy(llm.model_dir / name, tmp_path / name)
    check_proposer("draft_model", {"model": str(tmp_path)})


class OverDrafts(Proposer):
    def propose(self, requests):
        return [Draft([1] * (r.max_draft_tokens + 1)) for r in requests]


class OutOfVocabulary(Proposer):
    def propose(self, requests):
        return [Draft([VOCAB] * r.max_draft_tokens) for r in requests]


class Leaks(Proposer):
    def __init__(self):
        self.kept = {}

    def propose(self, requests):
        for r in requests:
            self.kept[r.seq_id] = list(r.token_ids) * 20  # never freed: release is not overridden
        return [Draft([]) for _ in requests]


class WrongProbs(Proposer):
    """Always drafts token 0 but claims it drew it from the uniform distribution."""

    def propose(self, requests):
        return [Draft([0] * r.max_draft_tokens, torch.full((r.max_draft_tokens, VOCAB), 1.0 / VOCAB))
                for r in requests]


@pytest.mark.parametrize("broken, message", [
    (OverDrafts, "drafted 1 tokens for a budget of 0"),
    (OutOfVocabulary, "outside the vocabulary"),
    (Leaks, "bytes more after 400 released requests"),
    (WrongProbs, "do not follow the target's distribution"),
])
def test_the_kit_fails_on_broken_proposers(broken, message):
    with pytest.raises(AssertionError, match=message):
        check_proposer(lambda context: broken())


def test_the_kit_is_a_pytest_fixture(proposer_conformance):
    assert proposer_conformance is check_proposer
    assert callable(make_factory("ngram")) and tiny_model().shape.vocab_size == VOCAB


def test_the_example_package_runs_the_kit_in_its_own_tests():
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "docs" / "examples" / "specplug-phrases"
    env = {**os.environ, "PYTHONPATH": str(example)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example / "tests")],
                            capture_output=True, text=True, env=env, cwd=example, timeout=600)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr
