"""Small checks shared by the config's sections: each raises ConfigError with one line naming the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from specplug.errors import ConfigError, closest

MAX_SPECULATIVE_TOKENS = 64


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
