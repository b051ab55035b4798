"""The ``serve:`` section: the server's batch size, named strategies, default strategy and ``auto``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from specplug.config.checks import PluginChoice, adaptive_k_option, choice, k_option, require
from specplug.errors import closest
from specplug.options import defaults, option, parse_section


@dataclass(frozen=True)
class AutoOptions:
    strategy: str | None = option(None, "the strategy whose proposer auto drives (default: the top-level one)")
    explore: float = option(0.05, "share of steps on which auto tries a draft it would not choose", ge=0, lt=1)


@dataclass(frozen=True)
class StrategyOptions:
    proposer: Any = option(help="e.g. proposer: {name: ngram}")
    num_speculative_tokens: int | None = k_option(None)  # default: the top-level one
    adaptive_k: bool | str | None = adaptive_k_option(None)  # default: the top-level one


@dataclass(frozen=True)
class ServeOptions:
    max_batch_size: int = option(8, "rows decoded together; later requests wait", ge=1)
    served_model_name: str | None = option(None, "the model name clients see (default: `model`)")
    strategies: dict[Any, Any] = option({}, "name -> {proposer, num_speculative_tokens, adaptive_k}; the top-level "
                                            "proposer is always one (named after it), and `none` always exists")
    default_strategy: str | None = option(None, "a strategy name or `auto` (default: the top-level proposer's)")
    auto: AutoOptions = option(AutoOptions, "how `auto` drives its strategy")
    max_num_speculative_tokens: int | None = k_option(None, "verify width bound for live swaps (default: the "
                                                            "largest configured k)")
    drain_timeout_s: float = option(30.0, "on SIGTERM, how long in-flight requests may finish (seconds)", ge=0)
    sagemaker_stream: str = option("jsonlines", "/invocations streaming: jsonlines (LMI's default) or sse",
                                   choices=("jsonlines", "sse"))
    api_key: str | None = option(None, "clients of the inference routes must send it as a bearer token (else "
                                       "SPECPLUG_API_KEY)", secret=True)
    max_request_bytes: int = option(2_000_000, "larger request bodies are refused with 413 before they are read",
                                    ge=1024)

    def check(self) -> str | None:
        if self.served_model_name == "":
            return "serve.served_model_name must be a non-empty string"
        key = self.api_key
        if key is not None and not (key.strip() and key.isprintable()):
            return "serve.api_key must be a non-empty string of printable characters (its value is not shown)"
        if "auto" in self.strategies:
            return "serve.strategies: 'auto' is reserved; configure it under serve.auto"
        return None


SERVE_DEFAULTS: dict[str, Any] = defaults(ServeOptions)


@dataclass(frozen=True)
class StrategyConfig:
    proposer: PluginChoice
    num_speculative_tokens: int
    adaptive_k: bool | str  # False, True or "auto"


@dataclass(frozen=True)
class ServeConfig:
    max_batch_size: int = 8
    served_model_name: str | None = None
    strategies: dict[str, StrategyConfig] = field(default_factory=dict)  # none and the top-level one included
    default_strategy: str = "none"
    auto_strategy: str | None = None  # None: no `auto`
    auto_explore: float = 0.05
    max_num_speculative_tokens: int = 1
    drain_timeout_s: float = 30.0
    sagemaker_stream: str = "jsonlines"
    api_key: str | None = field(default=None, repr=False)  # a secret: never printed
    max_request_bytes: int = 2_000_000


def parse_serve(serve: ServeOptions, top: PluginChoice, k: int, adaptive_k: bool | str) -> ServeConfig:
    """The ``serve`` section, checked by its schema, with what it derives from the top-level keys
    (``top`` proposer, its ``k`` and ``adaptive_k``): the strategies, the default, auto's and the bound."""
    strategies = {top.name: StrategyConfig(top, k, adaptive_k), "none": StrategyConfig(PluginChoice("none"), 1, False)}
    for name, entry in serve.strategies.items():
        strategies[str(name)] = strategy_config(f"serve.strategies.{name}", entry, k, adaptive_k)
    auto_strategy = serve.auto.strategy or (top.name if top.name != "none" else None)
    require(auto_strategy is None or auto_strategy in strategies,
            f"serve.auto.strategy '{auto_strategy}' is not a configured strategy"
            f"{closest(str(auto_strategy), strategies)}")
    default = serve.default_strategy or top.name
    known = [*strategies, *(["auto"] if auto_strategy else [])]
    require(default in known, f"serve.default_strategy '{default}' is not a configured strategy"
                               f"{closest(str(default), known)}; known: {', '.join(known)}")
    widest = max(s.num_speculative_tokens for s in strategies.values())
    bound = serve.max_num_speculative_tokens or widest
    require(bound >= widest, f"serve.max_num_speculative_tokens ({bound}) is below a configured strategy's "
                              f"num_speculative_tokens ({widest})")
    return ServeConfig(serve.max_batch_size, serve.served_model_name, strategies, default, auto_strategy,
                       serve.auto.explore, bound, serve.drain_timeout_s, serve.sagemaker_stream, serve.api_key,
                       serve.max_request_bytes)


def strategy_config(where: str, entry: Any, k: int, adaptive_k: bool | str) -> StrategyConfig:
    if isinstance(entry, str):
        entry = {"proposer": entry}
    options, _ = parse_section(where, StrategyOptions, entry)
    proposer = choice({"proposer": options.proposer}, "proposer")
    strategy_k = k if options.num_speculative_tokens is None else options.num_speculative_tokens
    adaptive = adaptive_k if options.adaptive_k is None else options.adaptive_k
    return StrategyConfig(proposer, strategy_k, adaptive)


def serve_to_dict(serve: ServeConfig, top: PluginChoice, k: int, adaptive_k: bool | str) -> dict[str, Any]:
    """The ``serve`` mapping of a config file. What the section derives by itself (the top-level and
    `none` strategies, a default and auto strategy that are the top-level one, the width bound) is left
    out, so that it follows the top-level keys when the file is edited."""
    implied = {top.name: StrategyConfig(top, k, adaptive_k),
               "none": StrategyConfig(PluginChoice("none"), 1, False)}
    strategies = {name: s for name, s in serve.strategies.items() if implied.get(name) != s}
    widest = max([k, *(s.num_speculative_tokens for s in strategies.values())])
    derived = lambda value, default: None if value == default else value  # noqa: E731
    return {
        "max_batch_size": serve.max_batch_size, "served_model_name": serve.served_model_name,
        "strategies": {name: {"proposer": {"name": s.proposer.name, **s.proposer.options},
                              "num_speculative_tokens": s.num_speculative_tokens, "adaptive_k": s.adaptive_k}
                       for name, s in strategies.items()},
        "default_strategy": derived(serve.default_strategy, top.name),
        "auto": {"strategy": derived(serve.auto_strategy, top.name), "explore": serve.auto_explore},
        "max_num_speculative_tokens": serve.max_num_speculative_tokens if serve.max_num_speculative_tokens > widest
        else None,
        "drain_timeout_s": serve.drain_timeout_s, "sagemaker_stream": serve.sagemaker_stream,
        "api_key": serve.api_key, "max_request_bytes": serve.max_request_bytes,
    }
