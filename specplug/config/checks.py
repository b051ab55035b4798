"""Small checks shared by the config's sections: each raises ConfigError with one line naming the fix."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from specplug.errors import ConfigError, closest

MAX_SPECULATIVE_TOKENS = 64
MAX_SAMPLING_SEED = 2**63 - 1  # torch generators take seeds below 2**64; one range for every entry point


@dataclass(frozen=True)
class PluginChoice:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_keys(section: str, given: dict[str, Any], known: dict[str, Any]) -> None:
    for key in given:
        if key not in known:
            where = f"'{section}.{key}'" if section else f"'{key}'"
            raise ConfigError(f"unknown config key {where}{closest(key, known)}; "
                              f"known keys: {', '.join(known)}")


def choice(data: dict[str, Any], key: str, example: str = "ngram") -> PluginChoice:
    value = data[key]
    if isinstance(value, str):
        value = {"name": value}
    require(isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"],
            f"'{key}' needs a name, e.g. {key}: {{name: {example}}}")
    options = {k: v for k, v in value.items() if k != "name"}
    return PluginChoice(value["name"], options)


def integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def speculative_tokens(k: Any, key: str) -> int:
    require(integer(k) and 1 <= k <= MAX_SPECULATIVE_TOKENS,
            f"{key} must be an integer from 1 to {MAX_SPECULATIVE_TOKENS} (got {k!r}); "
            "use proposer: {name: none} for plain decoding")
    return k


def check_adaptive_k(value: Any, where: str = "adaptive_k") -> bool | str:
    """false (fixed k), true (per-row heuristic) or auto (measured cost and acceptance)."""
    require(isinstance(value, bool) or value == "auto",
            f"{where} must be true, false or auto (got {value!r}); auto chooses each step's draft length "
            "from this machine's measured verify cost and the acceptance seen so far")
    return value


def finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


def sampling_problem(temperature: Any = 0.0, top_k: Any = 0, top_p: Any = 1.0,
                     seed: Any = None) -> tuple[str, str] | None:
    """The first sampling value that breaks a rule, as (field, one-line message), or None.

    The one set of sampling rules: the config's ``sampling`` section, every server request and a prompts
    file's ``"seed"`` are checked by it.
    """
    if not (finite(temperature) and temperature >= 0):
        return "temperature", f"temperature must be a number >= 0 and finite (got {temperature!r}); 0 means greedy"
    if not (integer(top_k) and top_k >= 0):
        return "top_k", f"top_k must be an integer >= 0 (got {top_k!r}); 0 turns it off"
    if not (finite(top_p) and 0 < top_p <= 1):
        return "top_p", f"top_p must be in (0, 1] (got {top_p!r}); 1 turns it off"
    if not (seed is None or (integer(seed) and 0 <= seed <= MAX_SAMPLING_SEED)):
        return "seed", f"seed must be an integer from 0 to {MAX_SAMPLING_SEED} or null (got {seed!r})"
    return None
