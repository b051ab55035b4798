"""Configuration: defaults < file (``--config`` or ``SPECPLUG_CONFIG``) < ``--set key=value`` overrides.

Files are YAML or JSON. Every key is checked: unknown keys get the closest known one suggested.
Proposer options are the keys under ``proposer:`` besides ``name``; the proposer checks them.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specplug.errors import ConfigError, closest
from specplug.metadata import SamplingParams

MAX_SPECULATIVE_TOKENS = 64
MAX_SAMPLING_SEED = 2**63 - 1  # torch generators take seeds below 2**64; one range for every entry point
# how the embedded engine computes its linear layers (specplug/models/kernels.py): auto = measured
LINEAR_KERNELS = ("auto", "linear", "w_x", "x_wt")

DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m",  # HF directory, .gguf file, or alias
    "dtype": "float32",
    "device": "cpu",  # cpu, cuda, cuda:N, auto
    "num_speculative_tokens": 3,  # k, as in vLLM (3: a 4-token verify costs ~15% more than one step on CPU)
    "adaptive_k": False,  # per-row draft length from recent acceptance (k is then the upper bound)
    "proposer": {"name": "ngram"},
    "verifier": {"name": "rejection"},
    "sampling": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0},
    "max_model_len": 2048,
    "max_new_tokens": 256,
    "stop": [],
    "threads": None,  # torch CPU threads; None = torch's default
    "linear_kernel": "auto",  # auto (fastest measured on this machine, cached), linear, w_x or x_wt
    "enforce_eager": False,  # true: never capture CUDA graphs (as in vLLM); CPU steps are always eager
    "compile": "auto",  # torch.compile the decode/verify steps: auto (= off: see docs/benchmarks.md), on, off
    "serve": {},  # `specplug serve` only: see SERVE_DEFAULTS and docs/serving.md
}

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
}
STRATEGY_KEYS = {"proposer": None, "num_speculative_tokens": None, "adaptive_k": None}


@dataclass(frozen=True)
class StrategyConfig:
    proposer: PluginChoice
    num_speculative_tokens: int
    adaptive_k: bool


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


@dataclass(frozen=True)
class PluginChoice:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    model: str
    dtype: str
    device: str
    num_speculative_tokens: int
    adaptive_k: bool
    proposer: PluginChoice
    verifier: PluginChoice
    sampling: SamplingParams
    max_model_len: int
    max_new_tokens: int
    stop: tuple[str, ...]
    threads: int | None
    linear_kernel: str = "auto"
    enforce_eager: bool = False
    compile: str = "auto"
    serve: ServeConfig = field(default_factory=ServeConfig)
    source: str = "defaults"  # where it came from, for messages

    @property
    def seed(self) -> int | None:
        return self.sampling.seed


def config_to_dict(config: Config) -> dict[str, Any]:
    """The mapping a config file holds for ``config`` (load_config of it gives ``config`` back)."""
    sampling = config.sampling
    return {
        "model": config.model, "dtype": config.dtype, "device": config.device,
        "num_speculative_tokens": config.num_speculative_tokens, "adaptive_k": config.adaptive_k,
        "proposer": {"name": config.proposer.name, **config.proposer.options},
        "verifier": {"name": config.verifier.name, **config.verifier.options},
        "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
                     "seed": sampling.seed},
        "max_model_len": config.max_model_len, "max_new_tokens": config.max_new_tokens,
        "stop": list(config.stop), "threads": config.threads, "linear_kernel": config.linear_kernel,
        "enforce_eager": config.enforce_eager, "compile": config.compile, "serve": _serve_to_dict(config),
    }


def _serve_to_dict(config: Config) -> dict[str, Any]:
    serve = config.serve
    implied = {config.proposer.name: StrategyConfig(config.proposer, config.num_speculative_tokens, config.adaptive_k),
               "none": StrategyConfig(PluginChoice("none"), 1, False)}  # what _serve adds by itself
    strategies = {name: s for name, s in serve.strategies.items() if implied.get(name) != s}
    return {
        "max_batch_size": serve.max_batch_size, "served_model_name": serve.served_model_name,
        "strategies": {name: {"proposer": {"name": s.proposer.name, **s.proposer.options},
                              "num_speculative_tokens": s.num_speculative_tokens, "adaptive_k": s.adaptive_k}
                       for name, s in strategies.items()},
        "default_strategy": serve.default_strategy,
        "auto": {"strategy": serve.auto_strategy, "explore": serve.auto_explore},
        "max_num_speculative_tokens": serve.max_num_speculative_tokens,
        "drain_timeout_s": serve.drain_timeout_s, "sagemaker_stream": serve.sagemaker_stream,
    }


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, merge and validate a configuration. ``path=None`` falls back to ``$SPECPLUG_CONFIG``."""
    data = copy.deepcopy(DEFAULTS)
    path = path or os.environ.get("SPECPLUG_CONFIG") or None
    if path is not None:
        _merge(data, read_config_file(Path(path)))
    parsed = [parse_override(item) for item in overrides]
    # a proposer switch first, so that options set beside it are not dropped with the old proposer's
    for key, value in sorted(parsed, key=lambda kv: kv[0] not in ("proposer", "proposer.name")):
        _set_dotted(data, key, value)
    return validate(data, source=str(path) if path else "defaults")


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found (see configs/ for ready-made ones)")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML/JSON: {exc}".replace("\n", " ")) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
    return loaded


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. --set proposer.name=none), got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if key in ("proposer", "verifier") and isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            if key == "proposer" and value.get("name", base[key].get("name")) != base[key].get("name"):
                base[key] = {}  # another proposer: the previous one's options do not apply
            _merge(base[key], value)
        else:
            base[key] = value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    for part in reversed(key.split(".")):
        value = {part: value}
    _merge(data, value)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_keys(section: str, given: dict[str, Any], known: dict[str, Any]) -> None:
    for key in given:
        if key not in known:
            where = f"'{section}.{key}'" if section else f"'{key}'"
            raise ConfigError(f"unknown config key {where}{closest(key, known)}; "
                              f"known keys: {', '.join(known)}")


def _choice(data: dict[str, Any], key: str) -> PluginChoice:
    value = data[key]
    if isinstance(value, str):
        value = {"name": value}
    _require(isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"],
             f"'{key}' needs a name, e.g. {key}: {{name: {DEFAULTS[key]['name']}}}")
    options = {k: v for k, v in value.items() if k != "name"}
    return PluginChoice(value["name"], options)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(data: dict[str, Any], source: str = "defaults") -> Config:
    _check_keys("", data, DEFAULTS)
    sampling = data["sampling"]
    _require(isinstance(sampling, dict), "'sampling' must be a mapping (temperature, top_k, top_p, seed)")
    _check_keys("sampling", sampling, DEFAULTS["sampling"])
    sampling = {**DEFAULTS["sampling"], **sampling}
    k = _speculative_tokens(data["num_speculative_tokens"], "num_speculative_tokens")
    temperature = sampling["temperature"]
    _require(isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature >= 0,
             f"sampling.temperature must be a number >= 0 (got {temperature!r}); 0 means greedy")
    _require(_integer(sampling["top_k"]) and sampling["top_k"] >= 0,
             f"sampling.top_k must be an integer >= 0 (got {sampling['top_k']!r}); 0 turns it off")
    top_p = sampling["top_p"]
    _require(isinstance(top_p, (int, float)) and 0 < top_p <= 1,
             f"sampling.top_p must be in (0, 1] (got {top_p!r}); 1 turns it off")
    _require(sampling["seed"] is None or (_integer(sampling["seed"]) and 0 <= sampling["seed"] <= MAX_SAMPLING_SEED),
             f"sampling.seed must be an integer from 0 to {MAX_SAMPLING_SEED} or null (got {sampling['seed']!r})")
    for key in ("max_model_len", "max_new_tokens"):
        _require(_integer(data[key]) and data[key] >= 1, f"{key} must be an integer >= 1 (got {data[key]!r})")
    for key in ("adaptive_k", "enforce_eager"):
        _require(isinstance(data[key], bool), f"{key} must be true or false (got {data[key]!r})")
    _require(data["linear_kernel"] in LINEAR_KERNELS,
             f"linear_kernel must be one of {', '.join(LINEAR_KERNELS)} (got {data['linear_kernel']!r}); "
             "auto measures the fastest on this machine")
    if isinstance(data["compile"], bool):  # YAML reads a bare on/off as a boolean
        data["compile"] = "on" if data["compile"] else "off"
    _require(data["compile"] in ("auto", "on", "off"),
             f"compile must be auto, on or off (got {data['compile']!r})")
    _require(data["threads"] is None or (_integer(data["threads"]) and data["threads"] >= 1),
             f"threads must be an integer >= 1 or null (got {data['threads']!r})")
    stop = data["stop"]
    stop = [stop] if isinstance(stop, str) else stop
    _require(isinstance(stop, list) and all(isinstance(s, str) for s in stop),
             "stop must be a string or a list of strings")
    for key in ("model", "dtype", "device"):
        _require(isinstance(data[key], str) and data[key], f"{key} must be a non-empty string")
    return Config(
        model=data["model"], dtype=data["dtype"], device=data["device"], num_speculative_tokens=k,
        adaptive_k=data["adaptive_k"],
        proposer=_choice(data, "proposer"), verifier=_choice(data, "verifier"),
        sampling=SamplingParams(float(temperature), sampling["top_k"], float(top_p), sampling["seed"]),
        max_model_len=data["max_model_len"], max_new_tokens=data["max_new_tokens"], stop=tuple(stop),
        threads=data["threads"], linear_kernel=data["linear_kernel"], enforce_eager=data["enforce_eager"],
        compile=data["compile"], serve=_serve(data, k), source=source,
    )


def _speculative_tokens(k: Any, key: str) -> int:
    _require(_integer(k) and 1 <= k <= MAX_SPECULATIVE_TOKENS,
             f"{key} must be an integer from 1 to {MAX_SPECULATIVE_TOKENS} (got {k!r}); "
             "use proposer: {name: none} for plain decoding")
    return k


def _serve(data: dict[str, Any], k: int) -> ServeConfig:
    serve = data["serve"] or {}
    _require(isinstance(serve, dict), "'serve' must be a mapping (see docs/serving.md)")
    _check_keys("serve", serve, SERVE_DEFAULTS)
    serve = {**SERVE_DEFAULTS, **serve}
    auto = serve["auto"] or {}
    _require(isinstance(auto, dict), "serve.auto must be a mapping (strategy, explore)")
    _check_keys("serve.auto", auto, SERVE_DEFAULTS["auto"])
    auto = {**SERVE_DEFAULTS["auto"], **auto}
    top = _choice(data, "proposer")
    strategies = {top.name: StrategyConfig(top, k, data["adaptive_k"]),
                  "none": StrategyConfig(PluginChoice("none"), 1, False)}
    _require(isinstance(serve["strategies"], dict),
             "serve.strategies must map names to {proposer, num_speculative_tokens}")
    for name, entry in serve["strategies"].items():
        strategies[str(name)] = _strategy(f"serve.strategies.{name}", entry, k, data["adaptive_k"])
    _require("auto" not in serve["strategies"], "serve.strategies: 'auto' is reserved; configure it under serve.auto")
    auto_strategy = auto["strategy"] or (top.name if top.name != "none" else None)
    _require(auto_strategy is None or auto_strategy in strategies,
             f"serve.auto.strategy '{auto_strategy}' is not a configured strategy"
             f"{closest(str(auto_strategy), strategies)}")
    default = serve["default_strategy"] or top.name
    known = [*strategies, *(["auto"] if auto_strategy else [])]
    _require(default in known, f"serve.default_strategy '{default}' is not a configured strategy"
                               f"{closest(str(default), known)}; known: {', '.join(known)}")
    explore = auto["explore"]
    _require(isinstance(explore, (int, float)) and not isinstance(explore, bool) and 0 <= explore < 1,
             f"serve.auto.explore must be a number in [0, 1) (got {explore!r})")
    widest = max(s.num_speculative_tokens for s in strategies.values())
    bound = serve["max_num_speculative_tokens"] or widest
    _speculative_tokens(bound, "serve.max_num_speculative_tokens")
    _require(bound >= widest, f"serve.max_num_speculative_tokens ({bound}) is below a configured strategy's "
                              f"num_speculative_tokens ({widest})")
    _require(_integer(serve["max_batch_size"]) and serve["max_batch_size"] >= 1,
             f"serve.max_batch_size must be an integer >= 1 (got {serve['max_batch_size']!r})")
    drain = serve["drain_timeout_s"]
    _require(isinstance(drain, (int, float)) and not isinstance(drain, bool) and drain >= 0,
             f"serve.drain_timeout_s must be a number of seconds >= 0 (got {drain!r})")
    _require(serve["sagemaker_stream"] in ("jsonlines", "sse"),
             f"serve.sagemaker_stream must be jsonlines or sse (got {serve['sagemaker_stream']!r})")
    name = serve["served_model_name"]
    _require(name is None or (isinstance(name, str) and name), "serve.served_model_name must be a non-empty string")
    return ServeConfig(serve["max_batch_size"], name, strategies, default, auto_strategy, float(explore), bound,
                       float(drain), serve["sagemaker_stream"])


def _strategy(where: str, entry: Any, k: int, adaptive_k: bool) -> StrategyConfig:
    if isinstance(entry, str):
        entry = {"proposer": entry}
    _require(isinstance(entry, dict),
             f"{where} must be a mapping: {{proposer: {{name: ...}}, num_speculative_tokens: N}}")
    _check_keys(where, entry, STRATEGY_KEYS)
    _require("proposer" in entry, f"{where} needs a proposer, e.g. proposer: {{name: ngram}}")
    proposer = _choice({"proposer": entry["proposer"]}, "proposer")
    strategy_k = _speculative_tokens(entry.get("num_speculative_tokens", k), f"{where}.num_speculative_tokens")
    adaptive = entry.get("adaptive_k", adaptive_k)
    _require(isinstance(adaptive, bool), f"{where}.adaptive_k must be true or false (got {adaptive!r})")
    return StrategyConfig(proposer, strategy_k, adaptive)


def with_overrides(config: Config, overrides: dict[str, Any], source: str) -> Config:
    """``config`` with a mapping of changes merged over it (as a config file's keys), validated."""
    data = config_to_dict(config)
    _merge(data, overrides)
    return validate(data, source=source)


class ConfigWatcher:
    """Notices a changed config file (modification time, size or inode: an atomic replace counts)."""

    def __init__(self, path: str):
        self.path = path
        self.seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def changed(self) -> bool:
        signature = self._signature()
        if signature == self.seen:
            return False
        self.seen = signature
        return True
