"""The conformance kit (specplug.testing) passes on every built-in proposer and fails on broken ones."""

from __future__ import annotations

import shutil

import pytest
import torch

from specplug.metadata import Draft
from specplug.proposers.base import Proposer
from specplug.models.loader import DEFAULT_MODEL, resolve_model
from specplug.plugins import load_registry
from specplug.testing import VOCAB, check_greedy_on_the_real_model, check_proposer, make_factory, tiny_model
from specplug.testing.checks import tiny_eagle3_head


def built_in_proposers() -> list[str]:
    from specplug.plugins import make_plugin_manager

    return load_registry(make_plugin_manager(load_entrypoints=False)).names("proposer")


# Options for the tiny 2-layer model (every other built-in runs with its defaults). suffix keeps earlier
# requests on purpose: with a small bound its cache is full before the leak check starts counting.
TINY_OPTIONS = {"ngram": {"min_n": 2, "max_n": 3}, "layerskip": {"skip_mlp": [1]},
                "suffix": {"max_cached_tokens": 1000}}


@pytest.fixture(scope="module")
def draft_model_options(tmp_path_factory):
    """draft_model on the tiny target: a tiny draft saved as an HF directory (with the real tokenizer's
    files beside it); on the real model: the target itself as its draft (every draft accepted)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    real = resolve_model(DEFAULT_MODEL)
    path = tmp_path_factory.mktemp("tiny-draft")
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (real / name).exists():
            shutil.copy(real / name, path / name)
    return {"model": str(path)}, {"model": str(real)}


@pytest.fixture(scope="module")
def eagle3_options(tmp_path_factory):
    """eagle3 on the tiny target: a random head for it; on the real model: the shipped head (its default)."""
    path = tmp_path_factory.mktemp("tiny-head")
    tiny_eagle3_head(tiny_model(0)).save(path, dtype=torch.float64)
    return {"head": str(path)}, {}


MODEL_OPTIONS = {"draft_model": "draft_model_options", "eagle3": "eagle3_options"}  # options from a fixture


@pytest.mark.parametrize("name", built_in_proposers())
def test_the_kit_passes_on_every_built_in(name, request):
    """A new built-in proposer is checked here with its defaults, with nothing to add."""
    options = real_options = TINY_OPTIONS.get(name, {})
    if name in MODEL_OPTIONS:
        options, real_options = request.getfixturevalue(MODEL_OPTIONS[name])
    check_proposer(name, options, real_options=real_options)


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


class ListsOnly(Proposer):
    """Drafts the last two tokens again where they repeat the two before them, comparing rows with
    ``==`` as lists do: vLLM's rows are numpy arrays, where that comparison is elementwise."""

    def propose(self, requests):
        drafts = []
        for r in requests:
            tail = r.token_ids[-2:]
            repeats = len(r.token_ids) >= 4 and tail == r.token_ids[-4:-2]
            drafts.append(Draft([int(t) for t in tail][: r.max_draft_tokens] if repeats else []))
        return drafts


@pytest.mark.parametrize("broken, message", [
    (OverDrafts, "drafted 1 tokens for a budget of 0"),
    (ListsOnly, "failed under the vLLM adapter's row translation: ValueError"),
    (OutOfVocabulary, "outside the vocabulary"),
    (Leaks, "bytes more after 400 released requests"),
    (WrongProbs, "do not follow the target's distribution"),
])
def test_the_kit_fails_on_broken_proposers(broken, message):
    with pytest.raises(AssertionError, match=message):
        check_proposer(lambda context: broken(), real_model=None)


class ChangesTheTarget(Proposer):
    """A self-speculative drafter that skips an MLP by zeroing the shared target's norm weight in place
    while rows are live (restoring it when the last leaves): the target verifies with the wrong weights.
    (The norm, not a matrix: a kernel plan may store the matrices packed, where in-place ops do not reach.)"""

    def __init__(self, context):
        self.block, self.live, self.saved = context.target.blocks[5], set(), None

    def propose(self, requests):
        if self.saved is None:
            self.saved = self.block.mlp_norm.clone()
            self.block.mlp_norm.zero_()
        self.live.update(r.seq_id for r in requests)
        return [Draft([]) for _ in requests]

    def release(self, seq_id):
        self.live.discard(seq_id)
        if not self.live and self.saved is not None:
            self.block.mlp_norm.copy_(self.saved)
            self.saved = None


def test_the_real_model_check_fails_on_a_proposer_that_changes_the_target():
    spec = str(resolve_model(DEFAULT_MODEL))  # its own copy of the model: the kit's default copy stays clean
    with pytest.raises(AssertionError, match="parts from plain decoding at token .* not a near tie"):
        check_greedy_on_the_real_model(ChangesTheTarget, spec)


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
