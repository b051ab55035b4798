"""What the config's sections share: the plugin choice, the sampling rules and one-line checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from specplug.errors import ConfigError
from specplug.options import option, parse_section

MAX_SPECULATIVE_TOKENS = 64
MAX_SAMPLING_SEED = 2**63 - 1  # torch generators take seeds below 2**64; one range for every entry point
PLAIN_DECODING = "use proposer: {name: none} for plain decoding"


@dataclass(frozen=True)
class PluginChoice:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplingOptions:
    """The one set of sampling rules: the config's ``sampling`` section, every server request and a
    prompts file's ``"seed"`` are checked against it."""

    temperature: float = option(0.0, "softmax temperature", ge=0, hint="0 means greedy")
    top_k: int = option(0, "keep the k most likely tokens", ge=0, hint="0 turns it off")
    top_p: float = option(1.0, "keep the most likely tokens up to this probability", gt=0, le=1,
                          hint="1 turns it off")
    seed: int | None = option(0, "the run's seed (each request draws its own stream from it)", ge=0,
                              le=MAX_SAMPLING_SEED)


def sampling_problem(temperature: Any = 0.0, top_k: Any = 0, top_p: Any = 1.0,
                     seed: Any = None) -> tuple[str, str] | None:
    """The first sampling value that breaks a rule, as (field, one-line message), or None."""
    for name, value in {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}.items():
        try:
            parse_section("", SamplingOptions, {name: value})
        except ConfigError as exc:
            return name, str(exc)
    return None


def require(condition: bool, message: str) -> None:
    """For rules across sections, which no one schema can state."""
    if not condition:
        raise ConfigError(message)


def choice(data: dict[str, Any], key: str, example: str = "ngram") -> PluginChoice:
    value = data[key]
    if isinstance(value, str):
        value = {"name": value}
    require(isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"],
            f"'{key}' needs a name, e.g. {key}: {{name: {example}}}")
    options = {k: v for k, v in value.items() if k != "name"}
    return PluginChoice(value["name"], options)


def k_option(default: int | None, help: str = "draft length bound (k, as in vLLM)") -> Any:
    """A num_speculative_tokens field: k, the draft length bound, as in vLLM."""
    return option(default, help, ge=1, le=MAX_SPECULATIVE_TOKENS, hint=PLAIN_DECODING)


def adaptive_k_option(default: bool | str | None) -> Any:
    """An adaptive_k field: false (fixed k), true (per-row heuristic) or auto (measured cost and acceptance)."""
    return option(default, "per-row draft length", choices=(False, True, "auto"),
                  hint="auto chooses each step's draft length from this machine's measured verify cost and the "
                       "acceptance seen so far")
