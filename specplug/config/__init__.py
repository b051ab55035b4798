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

from specplug.config.checks import (MAX_SAMPLING_SEED, MAX_SPECULATIVE_TOKENS, PluginChoice, check_adaptive_k,
                                    check_keys, choice, integer, require, sampling_problem, speculative_tokens)
from specplug.config.serve import SERVE_DEFAULTS, ServeConfig, StrategyConfig, parse_serve, serve_to_dict
from specplug.errors import ConfigError
from specplug.metadata import SamplingParams

__all__ = ["DEFAULTS", "LINEAR_KERNELS", "MAX_SAMPLING_SEED", "MAX_SPECULATIVE_TOKENS", "SERVE_DEFAULTS", "Config",
           "ConfigWatcher", "PluginChoice", "ServeConfig", "StrategyConfig", "config_to_dict", "load_config",
           "validate", "with_overrides"]

# how the embedded engine computes its linear layers (specplug/models/kernels.py): auto = measured
LINEAR_KERNELS = ("auto", "linear", "w_x", "x_wt", "onednn")

DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m",  # HF directory, .gguf file, or alias
    "dtype": "float32",
    "device": "cpu",  # cpu, cuda, cuda:N, auto
    "num_speculative_tokens": 3,  # k, as in vLLM (3: a 4-token verify costs ~15% more than one step on CPU)
    # per-row draft length from recent acceptance (k is then the upper bound); auto: each step's from
    # measured verify cost and acceptance (and the proposer's draft confidences where it states them)
    "adaptive_k": False,
    "proposer": {"name": "ngram"},
    "verifier": {"name": "rejection"},
    "sampling": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0},
    "max_model_len": 2048,
    "max_new_tokens": 256,
    "stop": [],
    "threads": None,  # torch CPU threads; None = torch's default
    "linear_kernel": "auto",  # auto (fastest measured on this machine, cached), linear, w_x, x_wt or onednn
    "enforce_eager": False,  # true: never capture CUDA graphs (as in vLLM); CPU steps are always eager
    "compile": "auto",  # torch.compile the decode/verify steps: auto (= off: see docs/benchmarks.md), on, off
    "serve": {},  # `specplug serve` only: see SERVE_DEFAULTS and docs/serving.md
    "trtllm": {},  # the TensorRT-LLM adapter only: see TRTLLM_DEFAULTS and docs/tensorrt-llm.md
}
TRTLLM_DEFAULTS: dict[str, Any] = {
    "max_concurrency": None,  # no drafting above this many requests (TensorRT-LLM's Drafter)
    "draft_len_schedule": None,  # {batch size threshold: draft length}, TensorRT-LLM 1.2+
    "cuda_graph_padding": False,  # pad drafts to the static length (with TensorRT-LLM's CUDA graphs)
}


@dataclass(frozen=True)
class Config:
    model: str
    dtype: str
    device: str
    num_speculative_tokens: int
    adaptive_k: bool | str  # False, True or "auto"
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
    trtllm: dict[str, Any] = field(default_factory=lambda: dict(TRTLLM_DEFAULTS))
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
        "enforce_eager": config.enforce_eager, "compile": config.compile,
        "serve": serve_to_dict(config.serve, config.proposer, config.num_speculative_tokens, config.adaptive_k),
        "trtllm": dict(config.trtllm),
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
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a directory, not a file: point --config (or SPECPLUG_CONFIG) "
                          "at a YAML or JSON file (see configs/ for ready-made ones)")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found (see configs/ for ready-made ones)")
    try:
        loaded = yaml.safe_load(_utf8_text(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML/JSON: {exc}".replace("\n", " ")) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
    return loaded


def _utf8_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
                          "save the file as UTF-8") from None


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


def validate(data: dict[str, Any], source: str = "defaults") -> Config:
    check_keys("", data, DEFAULTS)
    sampling = data["sampling"]
    require(isinstance(sampling, dict), "'sampling' must be a mapping (temperature, top_k, top_p, seed)")
    check_keys("sampling", sampling, DEFAULTS["sampling"])
    sampling = {**DEFAULTS["sampling"], **sampling}
    k = speculative_tokens(data["num_speculative_tokens"], "num_speculative_tokens")
    problem = sampling_problem(**sampling)
    require(problem is None, f"sampling.{problem and problem[1]}")
    for key in ("max_model_len", "max_new_tokens"):
        require(integer(data[key]) and data[key] >= 1, f"{key} must be an integer >= 1 (got {data[key]!r})")
    check_adaptive_k(data["adaptive_k"])
    require(isinstance(data["enforce_eager"], bool),
            f"enforce_eager must be true or false (got {data['enforce_eager']!r})")
    require(data["linear_kernel"] in LINEAR_KERNELS,
            f"linear_kernel must be one of {', '.join(LINEAR_KERNELS)} (got {data['linear_kernel']!r}); "
            "auto measures the fastest on this machine")
    if isinstance(data["compile"], bool):  # YAML reads a bare on/off as a boolean
        data["compile"] = "on" if data["compile"] else "off"
    require(data["compile"] in ("auto", "on", "off"),
            f"compile must be auto, on or off (got {data['compile']!r})")
    require(data["threads"] is None or (integer(data["threads"]) and data["threads"] >= 1),
            f"threads must be an integer >= 1 or null (got {data['threads']!r})")
    stop = data["stop"]
    stop = [stop] if isinstance(stop, str) else stop
    require(isinstance(stop, list) and all(isinstance(s, str) for s in stop),
            "stop must be a string or a list of strings")
    for key in ("model", "dtype", "device"):
        require(isinstance(data[key], str) and data[key], f"{key} must be a non-empty string")
    return Config(
        model=data["model"], dtype=data["dtype"], device=data["device"], num_speculative_tokens=k,
        adaptive_k=data["adaptive_k"],
        proposer=choice(data, "proposer", DEFAULTS["proposer"]["name"]),
        verifier=choice(data, "verifier", DEFAULTS["verifier"]["name"]),
        sampling=SamplingParams(float(sampling["temperature"]), sampling["top_k"], float(sampling["top_p"]),
                                sampling["seed"]),
        max_model_len=data["max_model_len"], max_new_tokens=data["max_new_tokens"], stop=tuple(stop),
        threads=data["threads"], linear_kernel=data["linear_kernel"], enforce_eager=data["enforce_eager"],
        compile=data["compile"], serve=parse_serve(data, k), trtllm=parse_trtllm(data["trtllm"]), source=source,
    )


def parse_trtllm(section: Any) -> dict[str, Any]:
    require(isinstance(section, dict), "trtllm must be a mapping (max_concurrency, draft_len_schedule, "
                                       "cuda_graph_padding)")
    check_keys("trtllm", section, TRTLLM_DEFAULTS)
    data = {**TRTLLM_DEFAULTS, **section}
    limit = data["max_concurrency"]
    require(limit is None or (integer(limit) and limit >= 1),
            f"trtllm.max_concurrency must be an integer >= 1 or null (got {limit!r})")
    schedule = data["draft_len_schedule"]
    require(schedule is None or (isinstance(schedule, dict) and schedule and all(
        integer(b) and b >= 1 and integer(n) and n >= 0 for b, n in schedule.items())),
            f"trtllm.draft_len_schedule must map batch sizes (>= 1) to draft lengths (>= 0), e.g. "
            f"{{1: 4, 8: 2, 32: 0}}; got {schedule!r}")
    require(isinstance(data["cuda_graph_padding"], bool),
            f"trtllm.cuda_graph_padding must be true or false (got {data['cuda_graph_padding']!r})")
    return data


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
