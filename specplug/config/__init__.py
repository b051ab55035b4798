"""Configuration: defaults < file (``--config`` or ``SPECPLUG_CONFIG``) < ``--set key=value`` overrides.

Files are YAML or JSON. Every key is checked: unknown keys get the closest known one suggested.
Proposer options are the keys under ``proposer:`` besides ``name``; the proposer checks them.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specplug.config.checks import (MAX_SAMPLING_SEED, MAX_SPECULATIVE_TOKENS, PluginChoice, SamplingOptions,
                                    adaptive_k_option, choice, k_option)
from specplug.config.serve import SERVE_DEFAULTS, ServeConfig, ServeOptions, StrategyConfig, parse_serve, serve_to_dict
from specplug.errors import ConfigError
from specplug.metadata import SamplingParams
from specplug.options import defaults, option, parse_section

__all__ = ["DEFAULTS", "AdapterSections", "LINEAR_KERNELS", "MAX_SAMPLING_SEED", "MAX_SPECULATIVE_TOKENS",
           "SERVE_DEFAULTS", "Config", "ConfigFile", "ConfigWatcher", "PluginChoice", "ServeConfig", "StrategyConfig", "config_to_dict",
           "load_config", "validate", "with_overrides"]

# how the embedded engine computes its linear layers (specplug/models/kernels.py): auto = measured
LINEAR_KERNELS = ("auto", "linear", "w_x", "x_wt", "onednn")


@dataclass(frozen=True)
class ConfigFile:
    """What a config file holds: its keys, their defaults and their rules. Sections an engine adapter owns
    (``trtllm:``) are the adapter's: see ``AdapterSections``."""

    model: str = option("smollm2-135m", "HF directory, .gguf file, or alias")
    dtype: str = option("float32", "float32, bfloat16 or float16")
    device: str = option("cpu", "cpu, cuda, cuda:N or auto")
    # k, as in vLLM (3: a 4-token verify costs ~15% more than one step on CPU)
    num_speculative_tokens: int = k_option(3)
    # per-row draft length from recent acceptance (k is then the upper bound); auto: each step's from
    # measured verify cost and acceptance (and the proposer's draft confidences where it states them)
    adaptive_k: bool | str = adaptive_k_option(False)
    proposer: Any = option({"name": "ngram"}, "the draft proposer: {name: ..., its options}")
    verifier: Any = option({"name": "rejection"}, "the acceptance rule: {name: ..., its options}")
    sampling: SamplingOptions = option(SamplingOptions, "how tokens are chosen")
    max_model_len: int = option(2048, "context length (prompt and output)", ge=1)
    max_new_tokens: int = option(256, "tokens generated per prompt unless a request says otherwise", ge=1)
    stop: list[str] = option([], "stop strings", hint="one string is taken as a list of one")
    threads: int | None = option(None, "torch CPU threads; null = torch's default", ge=1)
    linear_kernel: str = option("auto", "auto (fastest measured on this machine, cached), linear, w_x, x_wt or onednn",
                                choices=LINEAR_KERNELS, hint="auto measures the fastest on this machine")
    enforce_eager: bool = option(False, "true: never capture CUDA graphs (as in vLLM); CPU steps are always eager")
    compile: str = option("auto", "torch.compile the decode/verify steps (auto = off: see docs/benchmarks.md)",
                          choices=("auto", "on", "off"))
    serve: ServeOptions = option(ServeOptions, "`specplug serve` only: see docs/serving.md")

    def check(self) -> str | None:
        empty = next((key for key in ("model", "dtype", "device") if not getattr(self, key)), None)
        return empty and f"{empty} must be a non-empty string"


DEFAULTS: dict[str, Any] = defaults(ConfigFile)


class AdapterSections(Mapping[str, type]):
    """The config sections engine adapters own: entry points of group ``specplug.config_sections``, each
    named after its section and pointing at its schema (e.g. ``trtllm = "specplug_trtllm.config:TrtllmOptions"``).
    A schema is imported only when a config holds its section."""

    GROUP = "specplug.config_sections"

    def __init__(self):
        self.entry_points = {ep.name: ep for ep in importlib.metadata.entry_points(group=self.GROUP)}

    def __getitem__(self, name: str) -> type:
        try:
            return self.entry_points[name].load()
        except ImportError as exc:
            raise ConfigError(f"config section '{name}' belongs to {self.entry_points[name].value}, which does not "
                              f"import ({exc}): reinstall the package that provides it, or remove the section") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.entry_points)

    def __len__(self) -> int:
        return len(self.entry_points)


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
    sections: dict[str, Any] = field(default_factory=dict)  # an adapter's section name -> its schema's instance
    source: str = "defaults"  # where it came from, for messages

    @property
    def seed(self) -> int | None:
        return self.sampling.seed

    def section(self, name: str, schema: type) -> Any:
        """An adapter's section: the one in the config, else ``schema``'s defaults."""
        return self.sections.get(name) or schema()


def config_to_dict(config: Config) -> dict[str, Any]:
    """The mapping a config file holds for ``config`` (load_config of it gives ``config`` back)."""
    return {
        "model": config.model, "dtype": config.dtype, "device": config.device,
        "num_speculative_tokens": config.num_speculative_tokens, "adaptive_k": config.adaptive_k,
        "proposer": {"name": config.proposer.name, **config.proposer.options},
        "verifier": {"name": config.verifier.name, **config.verifier.options},
        "sampling": dataclasses.asdict(config.sampling),
        "max_model_len": config.max_model_len, "max_new_tokens": config.max_new_tokens,
        "stop": list(config.stop), "threads": config.threads, "linear_kernel": config.linear_kernel,
        "enforce_eager": config.enforce_eager, "compile": config.compile,
        "serve": serve_to_dict(config.serve, config.proposer, config.num_speculative_tokens, config.adaptive_k),
        **{name: dataclasses.asdict(section) for name, section in config.sections.items()},
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


PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # configs/, shipped in the wheel


def packaged_configs() -> list[str]:
    """The names of the configs that ship with specplug (``--config ngram``)."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def find_config(path: Path) -> Path:
    """``path`` itself where it exists or names a directory; else a bare name (``ngram``, ``ngram.yaml``) of a
    config that ships with specplug."""
    if path.exists() or path.parent != Path("."):
        return path
    packaged = PACKAGED_CONFIGS / (path.name if path.suffix else f"{path.name}.yaml")
    return packaged if packaged.is_file() else path


def read_config_file(path: Path) -> dict[str, Any]:
    ready = f"ready-made ones ship with specplug: --config {' | '.join(packaged_configs())}"
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a directory, not a file: point --config (or SPECPLUG_CONFIG) "
                          f"at a YAML or JSON file ({ready})")
    path = find_config(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found ({ready})")
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
    data = dict(data)
    if isinstance(data.get("compile"), bool):  # YAML reads a bare on/off as a boolean
        data["compile"] = "on" if data["compile"] else "off"
    if isinstance(data.get("stop"), str):
        data["stop"] = [data["stop"]]
    file, sections = parse_section("", ConfigFile, data, AdapterSections())
    proposer = choice(data, "proposer", DEFAULTS["proposer"]["name"])
    k, adaptive_k = file.num_speculative_tokens, file.adaptive_k
    return Config(
        model=file.model, dtype=file.dtype, device=file.device, num_speculative_tokens=k, adaptive_k=adaptive_k,
        proposer=proposer, verifier=choice(data, "verifier", DEFAULTS["verifier"]["name"]),
        sampling=SamplingParams(**dataclasses.asdict(file.sampling)),
        max_model_len=file.max_model_len, max_new_tokens=file.max_new_tokens, stop=tuple(file.stop),
        threads=file.threads, linear_kernel=file.linear_kernel, enforce_eager=file.enforce_eager,
        compile=file.compile, serve=parse_serve(file.serve, proposer, k, adaptive_k), sections=sections,
        source=source,
    )


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
