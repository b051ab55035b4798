"""The live specplug strategy inside a vLLM worker: built from a config file, swapped when it changes.

Of a specplug config the adapter reads ``proposer``, ``num_speculative_tokens``, ``adaptive_k`` and
``dtype`` (of the proposer's own model copy); the target, batch size, context length and sampling are
vLLM's. ``num_speculative_tokens`` must not exceed vLLM's ``num_speculative_tokens`` (the bound).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from specplug.config import DEFAULTS, Config, ConfigWatcher, PluginChoice, load_config, validate
from specplug.models.loader import load_compact_model, load_tokenizer, parse_dtype
from specplug.models.llama import CompactLlama
from specplug.errors import ConfigError
from specplug.metadata import ProposerContext, VerifyOutcome
from specplug.proposers.base import Proposer as SpecplugProposer, next_draft_length, proposer_name
from specplug_vllm.plugin import registry

logger = logging.getLogger("vllm.specplug")


@dataclass
class Strategy:
    """One specplug config made live."""

    source: str  # the config file, or "defaults"
    config: Config
    proposer: SpecplugProposer

    @property
    def name(self) -> str:
        return self.config.proposer.name

    @property
    def k(self) -> int:
        return self.config.num_speculative_tokens

    @classmethod
    def around(cls, proposer: SpecplugProposer, k: int, adaptive_k: bool = False) -> "Strategy":
        """A strategy for a proposer object made elsewhere (the conformance kit's), with budget ``k``."""
        choice = PluginChoice(proposer_name(proposer))
        config = dataclasses.replace(validate(copy.deepcopy(DEFAULTS)), proposer=choice, num_speculative_tokens=k,
                                     adaptive_k=adaptive_k)
        return cls("direct", config, proposer)


@dataclass(frozen=True)
class EngineShape:
    """What the adapter needs of vLLM's configuration."""

    max_k: int  # vLLM's num_speculative_tokens
    vocab_size: int
    max_num_seqs: int
    max_model_len: int
    model_dir: str
    tokenizer_dir: str
    device: str

    @classmethod
    def from_vllm(cls, vllm_config) -> "EngineShape":
        model = vllm_config.model_config
        return cls(vllm_config.speculative_config.num_speculative_tokens, model.get_vocab_size(),
                   vllm_config.scheduler_config.max_num_seqs, model.max_model_len, str(model.model),
                   str(model.tokenizer), str(vllm_config.device_config.device))


def refresh(builder: "StrategyBuilder", path: str | None, watcher: ConfigWatcher | None
            ) -> tuple[Strategy | None, str | None]:
    """The config file's new strategy when it changed: (strategy, None); (None, why) when the new file
    fails to build (the caller keeps the old one running); (None, None) when nothing changed. Shared by
    the engine adapters (vLLM, TensorRT-LLM), so a swap means the same in each."""
    if watcher is None or not watcher.changed():
        return None, None
    try:
        return builder.build(path), None
    except Exception as error:  # noqa: BLE001 - any failure of a new config must keep the old one serving
        return None, f"{type(error).__name__}: {error}"


def verified(row, seq_id, accepted: int, emitted: tuple[int, ...], strategy: Strategy) -> VerifyOutcome:
    """What the engine kept of ``row``'s last draft (``row`` has ``k`` and ``num_draft``), for the
    proposer; the row's budget moves with adaptive_k and its draft count resets."""
    outcome = VerifyOutcome(seq_id, row.num_draft, accepted, emitted)
    if strategy.config.adaptive_k:
        row.k = next_draft_length(row.k, strategy.k, row.num_draft, accepted)
    row.num_draft = 0
    return outcome


class StrategyBuilder:
    """Builds proposers for one vLLM engine; the tokenizer and a target copy load once, when first needed."""

    def __init__(self, shape: EngineShape, keeps_draft_probs: bool = False):
        self.shape = shape
        self.keeps_draft_probs = keeps_draft_probs  # the engine verifies with the drafts' probabilities

    def build(self, path: str | None) -> Strategy:
        config = load_config(path)
        if config.num_speculative_tokens > self.shape.max_k:
            raise ConfigError(
                f"{path}: num_speculative_tokens is {config.num_speculative_tokens}, above vLLM's "
                f"speculative_config num_speculative_tokens ({self.shape.max_k}), the bound: raise vLLM's or "
                "lower the config's"
            )
        if config.adaptive_k == "auto":
            warn_auto_is_heuristic()
        reg = registry()
        reg.check_choice("proposer", config.proposer.name, config.proposer.options)
        shape = self.shape
        context = ProposerContext(config.num_speculative_tokens, shape.vocab_size, torch.device(shape.device),
                                  shape.max_num_seqs, shape.max_model_len, self.tokenizer(),
                                  load_target=functools.partial(self.target, config.dtype))
        proposer = reg.create("proposer", config.proposer.name, context, options=config.proposer.options)
        capabilities = reg.get("proposer", config.proposer.name).capabilities
        if getattr(capabilities, "draft_probs", False) and not self.keeps_draft_probs:
            warn_probs_dropped(config.proposer.name)
        return Strategy(str(path) if path else "defaults", config, proposer)

    @functools.cache
    def tokenizer(self):
        return load_tokenizer(Path(self.shape.tokenizer_dir))

    @functools.cache
    def target(self, dtype: str) -> CompactLlama:
        """A copy of vLLM's target in specplug's layout (vLLM's own weights are paged and repacked)."""
        return load_compact_model(Path(self.shape.model_dir), parse_dtype(dtype), torch.device(self.shape.device))


@functools.cache
def warn_probs_dropped(name: str) -> None:
    """Once per proposer: vLLM's custom drafter hook takes token ids only."""
    logger.warning("specplug: proposer '%s' returns draft probabilities, which vLLM's drafter hook drops: vLLM "
                   "verifies its drafts as deterministic (lossless, with lower acceptance when sampling)", name)


@functools.cache
def warn_auto_is_heuristic() -> None:
    """Once: ``auto`` times the embedded engine's own verify steps, which an adapter cannot."""
    logger.warning("specplug: adaptive_k: auto needs the embedded engine's verify-step timings; inside an engine "
                   "adapter it runs as adaptive_k: true (per-row draft length from recent acceptance)")
