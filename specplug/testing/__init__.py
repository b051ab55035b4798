"""A conformance kit for proposers, built on public interfaces only.

    from specplug.testing import check_proposer
    check_proposer(lambda context: MyProposer(...))          # or check_proposer("my_name", options={...})

It runs the proposer through every check below and raises ``AssertionError`` naming the first that
fails. Installed with specplug, it is also a pytest plugin (``specplug.pytest_plugin``, which loads this
kit only when a test asks for it): the fixture ``proposer_conformance`` is ``check_proposer``.

- budget: drafts never exceed ``max_draft_tokens`` (0 included); token ids are in the vocabulary;
  probabilities, when returned, have shape [n, V], are non-negative and sum to 1;
- rows join and leave between steps, in any order, with the same ``seq_id``s reused after release;
- release frees per-row state: memory held after many requests does not grow;
- greedy output through the embedded engine is identical to plain decoding (a tiny random Llama);
- the same proposer object, inside the vLLM adapter's row translation (rows that move, chunked
  prefill, numpy token rows, accepted counts derived from what was sampled, adaptive_k), gives output
  identical to plain greedy decoding;
- when it returns probabilities for sampled rows, sampled output follows the target's distribution
  (chi-square on the first token drafts can touch);
- greedy output on a real model (``real_model``, default SmolLM2-135M) equals plain decoding of the
  same engine, up to near ties (``real_model=None`` skips this one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from specplug.metadata import ProposerContext
from specplug.models.loader import DEFAULT_MODEL
from specplug.proposers.base import Proposer
from specplug.testing.checks import (VOCAB, check_budget, check_greedy_equals_plain, check_release_frees_state,
                                     check_rows_join_and_leave, check_sampling_follows_the_target, returns_probs,
                                     tiny_model)
from specplug.testing.real_model import check_greedy_on_the_real_model
from specplug.testing.vllm_rows import check_under_vllm_row_translation

__all__ = ["VOCAB", "check_greedy_on_the_real_model", "check_proposer", "check_under_vllm_row_translation",
           "make_factory", "tiny_model"]

Factory = Callable[[ProposerContext], Proposer]


def make_factory(name: str, options: dict[str, Any] | None = None, registry=None) -> Factory:
    """A factory for a registered proposer, through the registry (its option schema applies)."""
    from specplug.plugins import load_registry

    registry = registry or load_registry()
    return lambda context: registry.create("proposer", name, context, options=options or {})


def check_proposer(factory: Factory | str, options: dict[str, Any] | None = None, seed: int = 0, *,
                   real_model: str | None = DEFAULT_MODEL, real_options: dict[str, Any] | None = None) -> None:
    """Run every check on ``factory`` (or the registered proposer of that name with ``options``).

    ``real_model``: a model alias, HF directory or .gguf for the real-model check (None skips it);
    ``real_options``: a named proposer's options there, when they differ (a draft model of its vocabulary).
    """
    real_factory = factory
    if isinstance(factory, str):
        name = factory
        factory = make_factory(name, options)
        real_factory = make_factory(name, options if real_options is None else real_options)
    model = tiny_model(seed)
    for check in (check_budget, check_rows_join_and_leave, check_release_frees_state):
        check(factory, model, seed)
    check_under_vllm_row_translation(check_greedy_equals_plain(factory, model, seed), model, seed)
    if returns_probs(factory, model, seed):
        check_sampling_follows_the_target(factory, model, seed)
    if real_model is not None:
        check_greedy_on_the_real_model(real_factory, real_model)
