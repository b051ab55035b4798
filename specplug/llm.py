"""``LLM``: a configured engine (model, proposer, verifier) with a simple ``generate``."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from specplug.config import Config, PluginChoice, StrategyConfig, load_config
from specplug.errors import ConfigError, SpecplugError
from specplug.engine.engine import Engine, EngineRow, Request, StepOutput
from specplug.hosting.auto import AutoDraftLength
from specplug.hosting.strategy import Strategy
from specplug.models.costs import cost_by_width
from specplug.models.loader import (compact_from_hf, eos_ids, load_hf_model, load_tokenizer, parse_device,
                                    parse_dtype, resolve_model)
from specplug.metadata import ProposerContext, SamplingParams
from specplug.sampling import request_seed
from specplug.plugins import load_registry
from specplug.proposers import none
from specplug.proposers.base import Proposer
from specplug.prompts import Prompt, encode_prompt
from specplug.registry import Registry


@dataclass
class Completion:
    index: int
    text: str
    token_ids: list[int]  # generated ids only
    finish_reason: str  # "stop" or "length"
    stats: dict[str, Any] = field(default_factory=dict)


class LLM:
    """Loads the target model once and serves ``generate`` calls with the configured proposer."""

    def __init__(self, config: Config | None = None, registry: Registry | None = None, max_batch_size: int = 1,
                 max_speculative_tokens: int | None = None):
        self.config = config or load_config()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.registry = registry or load_registry()
        config = self.config
        self.registry.check_config(
            [(config.proposer.name, config.proposer.options),
             *((s.proposer.name, s.proposer.options) for s in config.serve.strategies.values())],
            (config.verifier.name, config.verifier.options), config.sampling.temperature)
        device, dtype = parse_device(self.config.device), parse_dtype(self.config.dtype)
        self.model_dir = resolve_model(self.config.model)
        self.tokenizer = load_tokenizer(self.model_dir)
        hf_model = load_hf_model(self.model_dir, dtype)
        self.eos_token_ids = eos_ids(hf_model, self.tokenizer)
        self.model = compact_from_hf(hf_model, dtype, device, self.config.linear_kernel)
        del hf_model
        self.max_batch_size = max_batch_size
        self.max_speculative_tokens = max_speculative_tokens  # verify width bound (default: the config's k)
        self.cost_priors: dict[tuple[int, int], dict[int, float]] = {}  # shared with variants: same weights
        self._check_context()
        self._build_engine()

    def _check_context(self) -> None:
        widest = max(self.max_speculative_tokens or 0, self.config.num_speculative_tokens)
        limit = self.model.shape.max_positions - widest
        if self.config.max_model_len > limit:
            raise ConfigError(f"max_model_len is {self.config.max_model_len}; this model holds at most "
                              f"{self.model.shape.max_positions} positions, {limit} with k = {widest} drafts "
                              f"verified past the end: set max_model_len <= {limit}")

    def _build_engine(self) -> None:
        self.lock = threading.Lock()  # one generate at a time: calls from other threads wait their turn
        config = self.config
        self.proposer = self.make_proposer(config.proposer, config.num_speculative_tokens)
        self.verifier = self.registry.create("verifier", config.verifier.name, options=config.verifier.options)
        self.engine = Engine(self.model, self.tokenizer, self.proposer, self.verifier,
                             config.num_speculative_tokens, self.max_batch_size, config.max_model_len,
                             config.seed, self.eos_token_ids, config.adaptive_k is True, config.enforce_eager,
                             compiled=config.compile == "on", max_speculative_tokens=self.max_speculative_tokens)
        self.engine.strategy.policy = self.draft_policy(config.num_speculative_tokens, config.adaptive_k)

    def make_strategy(self, name: str, choice: PluginChoice, k: int, adaptive_k: bool | str,
                      explore: float | None = None, source: str = "direct") -> Strategy:
        """A strategy for this LLM's engine: a new proposer, its k and how its draft length moves."""
        return Strategy(name, self.make_proposer(choice, k), k, adaptive_k is True,
                        self.draft_policy(k, adaptive_k, explore), source)

    def strategy_maker(self, config: Config):
        """``make`` for ``hosting.strategy.build_table``: the strategies of ``config`` on this engine."""
        def make(name: str, entry: StrategyConfig) -> Strategy:
            strategy = self.make_strategy(name, entry.proposer, entry.num_speculative_tokens, entry.adaptive_k,
                                          config.serve.auto_explore, config.source)
            self.engine.check_strategy(strategy)
            return strategy

        return make

    def draft_policy(self, k: int, adaptive_k: bool | str, explore: float | None = None) -> AutoDraftLength | None:
        """``adaptive_k: auto``'s policy (None otherwise); ``explore`` defaults to the config's serve.auto.explore."""
        if adaptive_k != "auto":
            return None
        return AutoDraftLength(k, self.cost_prior(), self.config.serve.auto_explore if explore is None else explore)

    def cost_prior(self) -> dict[int, float]:
        """ms per forward by token count at batch 1, from 1 to a full batch of the widest verify:
        ``auto``'s cost prior, measured once per batch size and width on these weights."""
        widest = max(self.max_speculative_tokens or 0, self.config.num_speculative_tokens) + 1
        key = (self.max_batch_size, widest)
        if key not in self.cost_priors:
            most = self.max_batch_size * widest
            counts = sorted({1, 2, 3, 4, *(2**i for i in range(3, most.bit_length() + 1)), *range(1, widest + 1), most})
            self.cost_priors[key] = cost_by_width(self.model, [c for c in counts if c <= max(most, 4)], repeats=2)
        return self.cost_priors[key]

    def make_proposer(self, choice: PluginChoice, num_speculative_tokens: int) -> Proposer:
        """A new proposer for this LLM's engine (its own per-row state), from a configured choice."""
        context = ProposerContext(num_speculative_tokens, self.model.shape.vocab_size, self.model.device,
                                  self.max_batch_size, self.config.max_model_len, self.tokenizer, self.model,
                                  self.config.enforce_eager)
        return self.registry.create("proposer", choice.name, context, options=choice.options)

    def variant(self, proposer: str | None = None, num_speculative_tokens: int | None = None,
                max_batch_size: int | None = None, sampling: SamplingParams | None = None,
                adaptive_k: bool | str | None = None, max_model_len: int | None = None,
                **proposer_options: Any) -> "LLM":
        """Another LLM on the same weights: another proposer, k, batch size, sampling, adaptive_k or context."""
        other = copy.copy(self)
        changes: dict[str, Any] = {key: value for key, value in (
            ("sampling", sampling), ("adaptive_k", adaptive_k), ("max_model_len", max_model_len)) if value is not None}
        if proposer is not None:
            changes["proposer"] = PluginChoice(proposer, proposer_options)
        if num_speculative_tokens is not None:
            changes["num_speculative_tokens"] = num_speculative_tokens
        other.config = dataclasses.replace(self.config, **changes)
        other.max_batch_size = max_batch_size or self.max_batch_size
        other._build_engine()
        return other

    def plain(self) -> "LLM":
        """The same engine decoding without speculation: the baseline."""
        return self.variant(none.NAME)

    def encode(self, prompt: Prompt) -> list[int]:
        return encode_prompt(self.tokenizer, prompt)

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int | None = None,
                 on_step: Callable[[StepOutput], None] | None = None,
                 seeds: Sequence[int | None] | None = None) -> list[Completion]:
        """Generate for every prompt (batched up to ``max_batch_size``); completions in input order."""
        return self.generate_ids([self.encode(p) for p in prompts], max_new_tokens, on_step, seeds)

    def generate_ids(self, prompts: Sequence[list[int]], max_new_tokens: int | None = None,
                     on_step: Callable[[StepOutput], None] | None = None,
                     seeds: Sequence[int | None] | None = None) -> list[Completion]:
        """``generate`` for prompts that are already token ids. Each prompt samples with its own seed:
        ``seeds[i]`` when given, else ``request_seed(i)``. A failed row raises SpecplugError."""
        with self.lock:
            return self._generate_ids(prompts, max_new_tokens, on_step, seeds)

    def request_seed(self, index: int) -> int | None:
        """The seed prompt ``index`` of a run samples with when it brings none: derived from ``sampling.seed``
        (a reproducible run, an independent stream per prompt); None (a fresh one) when that is null."""
        return None if self.config.seed is None else request_seed(self.config.seed, index)

    def _generate_ids(self, prompts, max_new_tokens, on_step, seeds) -> list[Completion]:
        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        requests = [Request(i, list(ids), max_new_tokens or self.config.max_new_tokens,
                            dataclasses.replace(self.config.sampling, seed=self.request_seed(i) if seed is None
                                                else seed), self.config.stop)
                    for i, (ids, seed) in enumerate(zip(prompts, seeds, strict=True))]
        done: dict[int, Completion] = {}
        for output in self.engine.run(requests):
            if output.finish_reason == "error":
                self._drop(requests)
                raise SpecplugError(f"prompt {output.request_id} failed: {output.row.error}")
            if on_step is not None:
                on_step(output)
            if output.finish_reason is not None:
                done[output.request_id] = self.completion(output.row)
        return [done[i] for i in range(len(requests))]

    def _drop(self, requests: list[Request]) -> None:
        """Leave the engine empty after a failed call (the next call starts clean)."""
        for request in requests:
            self.engine.abort(request.request_id)

    def completion(self, row: EngineRow) -> Completion:
        generated = row.token_ids[len(row.request.prompt_token_ids):]
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        if row.finish_reason == "stop":
            text = row.stopper.cut(text)
        return Completion(row.request.request_id, text, generated, row.finish_reason or "length",
                          self.stats(row, len(generated)))

    def stats(self, row: EngineRow, generated: int) -> dict[str, Any]:
        s = row.stats
        wall = max((s.finished or time.perf_counter()) - s.started, 1e-9)
        return {
            "proposer": self.config.proposer.name,
            "num_speculative_tokens": self.config.num_speculative_tokens,
            "generated_tokens": generated,
            "target_forwards": s.target_forwards,
            "draft_tokens": s.draft_tokens,
            "accepted_tokens": s.accepted_tokens,
            "acceptance_rate": s.accepted_tokens / s.draft_tokens if s.draft_tokens else 0.0,
            "mean_accepted_per_step": s.accepted_tokens / s.verify_steps if s.verify_steps else 0.0,
            "verify_steps": s.verify_steps,
            "wall_time_s": wall,
            "tokens_per_second": generated / wall,
        }
