"""Strategies for an engine that owns the target (vLLM, TensorRT-LLM): proposers built from a specplug
config against the engine's shape, a tokenizer and (for proposers that need one) a copy of the target
loaded once, on first use.

Of a specplug config an engine adapter reads the strategies (the top-level ``proposer``,
``num_speculative_tokens``, ``adaptive_k``, ``serve.strategies``, ``serve.default_strategy``,
``serve.auto``) and ``dtype`` (of a proposer's own model copy); the target, batch size, context length
and sampling are the engine's. No strategy may draft more than the engine's bound.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from specplug.config import Config, StrategyConfig
from specplug.errors import ConfigError
from specplug.hosting.auto import AutoDraftLength, assumed_prior
from specplug.hosting.strategy import Strategy, StrategyTable, build_table
from specplug.metadata import ProposerContext
from specplug.models.llama import CompactLlama
from specplug.models.loader import load_compact_model, load_tokenizer, parse_dtype
from specplug.proposers.base import feature_layers_of
from specplug.registry import Registry

logger = logging.getLogger("specplug.hosting")


@dataclass(frozen=True)
class EngineShape:
    """What a host needs of its engine's configuration."""

    max_k: int  # the engine's bound on draft tokens per row (vLLM's num_speculative_tokens)
    vocab_size: int
    max_num_seqs: int
    max_model_len: int
    model_dir: str
    tokenizer_dir: str
    device: str


class StrategyBuilder:
    """Builds one engine's strategy tables; the tokenizer and a target copy load once, when first needed."""

    def __init__(self, shape: EngineShape, registry: Registry, keeps_draft_probs: bool = False,
                 log: logging.Logger = logger, packed: bool = True):
        self.shape, self.registry, self.log = shape, registry, log
        self.keeps_draft_probs = keeps_draft_probs  # the engine verifies with the drafts' probabilities
        self.packed = packed  # the engine verifies each row's own tokens (no padding to the widest row)

    def table(self, config: Config, previous: StrategyTable | None = None) -> StrategyTable:
        return build_table(config, functools.partial(self.strategy, config), previous)

    def strategy(self, config: Config, name: str, entry: StrategyConfig) -> Strategy:
        k, choice = entry.num_speculative_tokens, entry.proposer
        if k > self.shape.max_k:
            raise ConfigError(f"{config.source}: strategy '{name}' has num_speculative_tokens {k}, above the "
                              f"engine's bound ({self.shape.max_k}, vLLM's speculative_config "
                              "num_speculative_tokens): raise the engine's or lower the config's")
        self.registry.check_choice("proposer", choice.name, choice.options)
        shape = self.shape
        context = ProposerContext(k, shape.vocab_size, torch.device(shape.device), shape.max_num_seqs,
                                  shape.max_model_len, self.tokenizer(),
                                  load_target=functools.partial(self.target, config.dtype))
        proposer = self.registry.create("proposer", choice.name, context, options=choice.options)
        if feature_layers_of(proposer):
            raise ConfigError(f"{config.source}: strategy '{name}': proposer '{choice.name}' drafts from the target's "
                              "features, which this engine's drafter hook does not hand out: serve its head with the "
                              "engine's own EAGLE-3 method (`python -m specplug_vllm.flags --config <config>` prints "
                              "vLLM's flags; docs/vllm.md)")
        capabilities = self.registry.get("proposer", choice.name).capabilities
        if getattr(capabilities, "draft_probs", False) and not self.keeps_draft_probs:
            self.warn_probs_dropped(choice.name)
        policy = None
        if entry.adaptive_k == "auto":
            policy = AutoDraftLength(k, assumed_prior(shape.max_num_seqs * (shape.max_k + 1)),
                                     config.serve.auto_explore, packed=self.packed)
        return Strategy(name, proposer, k, entry.adaptive_k is True, policy, config.source)

    @functools.cache
    def tokenizer(self):
        return load_tokenizer(Path(self.shape.tokenizer_dir))

    @functools.cache
    def target(self, dtype: str) -> CompactLlama:
        """A copy of the engine's target in specplug's layout (the engine's own weights are out of reach)."""
        return load_compact_model(Path(self.shape.model_dir), parse_dtype(dtype), torch.device(self.shape.device))

    @functools.cache
    def warn_probs_dropped(self, name: str) -> None:
        """Once per proposer: this engine's drafter hook takes token ids only."""
        self.log.warning("specplug: proposer '%s' returns draft probabilities, which this engine's drafter hook "
                         "drops: it verifies the drafts as deterministic (lossless, with lower acceptance when "
                         "sampling)", name)


def native_method(config: Config, registry: Registry, hook: str):
    """What ``config``'s proposer is in an engine's own terms, where its plugin module maps it onto one of that
    engine's methods (a function ``hook(options, k)``, e.g. ``vllm_speculative_config``); else None."""
    entry = registry.get("proposer", config.proposer.name)
    native = getattr(importlib.import_module(entry.factory.__module__), hook, None)
    return None if native is None else native(config.proposer.options, config.num_speculative_tokens)
