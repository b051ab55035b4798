"""The ``serve:`` section: the server's batch size, named strategies, default strategy and ``auto``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from specplug.config.checks import (PluginChoice, check_adaptive_k, check_keys, choice, integer, require,
                                   speculative_tokens)
from specplug.errors import closest

SERVE_DEFAULTS: dict[str, Any] = {
    "max_batch_size": 8,  # rows decoded together; later requests wait
    "served_model_name": None,  # the model name clients see (default: `model`)
    # name -> {proposer, num_speculative_tokens, adaptive_k}; the top-level proposer is always one
    # (named after it), and `none` (plain decoding) always exists
    "strategies": {},
    "default_strategy": None,  # a strategy name or `auto` (default: the top-level proposer's)
    "auto": {"strategy": None, "explore": 0.05},  # the strategy whose proposer auto drives (default: top-level)
    "max_num_speculative_tokens": None,  # verify width bound for live swaps (default: the largest configured k)
    "drain_timeout_s": 30.0,  # on SIGTERM, how long in-flight requests may finish
    "sagemaker_stream": "jsonlines",  # /invocations streaming: jsonlines (LMI's default) or sse
    "api_key": None,  # clients of the inference routes must send it as a bearer token (else SPECPLUG_API_KEY)
    "max_request_bytes": 2_000_000,  # larger request bodies are refused with 413 before they are read (TGI's)
}
STRATEGY_KEYS = {"proposer": None, "num_speculative_tokens": None, "adaptive_k": None}


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


def parse_serve(data: dict[str, Any], k: int) -> ServeConfig:
    """The ``serve`` section of a merged config mapping ``data`` whose top-level k is ``k``."""
    serve = data["serve"] or {}
    require(isinstance(serve, dict), "'serve' must be a mapping (see docs/serving.md)")
    check_keys("serve", serve, SERVE_DEFAULTS)
    serve = {**SERVE_DEFAULTS, **serve}
    auto = serve["auto"] or {}
    require(isinstance(auto, dict), "serve.auto must be a mapping (strategy, explore)")
    check_keys("serve.auto", auto, SERVE_DEFAULTS["auto"])
    auto = {**SERVE_DEFAULTS["auto"], **auto}
    top = choice(data, "proposer")
    strategies = {top.name: StrategyConfig(top, k, data["adaptive_k"]),
                  "none": StrategyConfig(PluginChoice("none"), 1, False)}
    require(isinstance(serve["strategies"], dict),
            "serve.strategies must map names to {proposer, num_speculative_tokens}")
    for name, entry in serve["strategies"].items():
        strategies[str(name)] = strategy_config(f"serve.strategies.{name}", entry, k, data["adaptive_k"])
    require("auto" not in serve["strategies"], "serve.strategies: 'auto' is reserved; configure it under serve.auto")
    auto_strategy = auto["strategy"] or (top.name if top.name != "none" else None)
    require(auto_strategy is None or auto_strategy in strategies,
            f"serve.auto.strategy '{auto_strategy}' is not a configured strategy"
            f"{closest(str(auto_strategy), strategies)}")
    default = serve["default_strategy"] or top.name
    known = [*strategies, *(["auto"] if auto_strategy else [])]
    require(default in known, f"serve.default_strategy '{default}' is not a configured strategy"
                               f"{closest(str(default), known)}; known: {', '.join(known)}")
    explore = auto["explore"]
    require(isinstance(explore, (int, float)) and not isinstance(explore, bool) and 0 <= explore < 1,
            f"serve.auto.explore must be a number in [0, 1) (got {explore!r})")
    widest = max(s.num_speculative_tokens for s in strategies.values())
    bound = serve["max_num_speculative_tokens"] or widest
    speculative_tokens(bound, "serve.max_num_speculative_tokens")
    require(bound >= widest, f"serve.max_num_speculative_tokens ({bound}) is below a configured strategy's "
                              f"num_speculative_tokens ({widest})")
    require(integer(serve["max_batch_size"]) and serve["max_batch_size"] >= 1,
            f"serve.max_batch_size must be an integer >= 1 (got {serve['max_batch_size']!r})")
    drain = serve["drain_timeout_s"]
    require(isinstance(drain, (int, float)) and not isinstance(drain, bool) and drain >= 0,
            f"serve.drain_timeout_s must be a number of seconds >= 0 (got {drain!r})")
    require(serve["sagemaker_stream"] in ("jsonlines", "sse"),
            f"serve.sagemaker_stream must be jsonlines or sse (got {serve['sagemaker_stream']!r})")
    name = serve["served_model_name"]
    require(name is None or (isinstance(name, str) and name), "serve.served_model_name must be a non-empty string")
    key = serve["api_key"]
    require(key is None or (isinstance(key, str) and key.strip() and key.isprintable()),
            "serve.api_key must be a non-empty string of printable characters (its value is not shown)")
    limit = serve["max_request_bytes"]
    require(integer(limit) and limit >= 1024,
            f"serve.max_request_bytes must be an integer >= 1024 (got {limit!r})")
    return ServeConfig(serve["max_batch_size"], name, strategies, default, auto_strategy, float(explore), bound,
                       float(drain), serve["sagemaker_stream"], key, limit)


def strategy_config(where: str, entry: Any, k: int, adaptive_k: bool | str) -> StrategyConfig:
    if isinstance(entry, str):
        entry = {"proposer": entry}
    require(isinstance(entry, dict),
            f"{where} must be a mapping: {{proposer: {{name: ...}}, num_speculative_tokens: N}}")
    check_keys(where, entry, STRATEGY_KEYS)
    require("proposer" in entry, f"{where} needs a proposer, e.g. proposer: {{name: ngram}}")
    proposer = choice({"proposer": entry["proposer"]}, "proposer")
    strategy_k = speculative_tokens(entry.get("num_speculative_tokens", k), f"{where}.num_speculative_tokens")
    adaptive = check_adaptive_k(entry.get("adaptive_k", adaptive_k), f"{where}.adaptive_k")
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
