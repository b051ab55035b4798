"""Option schemas: what a proposer or verifier accepts, declared once as a dataclass.

    @dataclass(frozen=True)
    class NgramOptions:
        min_n: int = option(1, "shortest n-gram to look up", ge=1, le=64)
        max_n: int = option(4, "longest n-gram to look up", ge=1, le=64)

        def check(self) -> str | None:          # optional: rules across fields
            return None if self.min_n <= self.max_n else "min_n must not exceed max_n"

A field without a default is required. Types: int, float, bool, str, list[int], list[str], and any of
these or None. ``parse_options`` checks a config's mapping against the schema (unknown keys with a
did-you-mean, missing required keys, types, ranges, choices) and returns the schema's instance.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

from specplug.errors import ConfigError, closest

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, help: str = "", *, ge: float | None = None, le: float | None = None,
           gt: float | None = None, lt: float | None = None, choices: Sequence[Any] | None = None) -> Any:
    """A schema field: its default (none: required), help text, and bounds (applied to each item of a list)."""
    meta = {"help": help, "ge": ge, "le": le, "gt": gt, "lt": lt, "choices": tuple(choices) if choices else None}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The schema of a plugin that takes no options."""


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    name: str
    type: str
    default: Any
    required: bool
    help: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe(schema: type) -> list[OptionInfo]:
    """Each option's name, type, default and help, for `specplug plugins`."""
    hints = typing.get_type_hints(schema)
    infos = []
    for f in dataclasses.fields(schema):
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if required else (f.default if f.default is not MISSING else f.default_factory())
        infos.append(OptionInfo(f.name, _type_name(hints[f.name]), default, required, f.metadata.get("help", "")))
    return infos


def parse_options(what: str, schema: type, given: dict[str, Any]) -> Any:
    """``given`` checked against ``schema`` (``what`` names the plugin in messages): its instance."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in given:
        if key not in fields:
            raise ConfigError(f"{what} has no option '{key}'{closest(key, list(fields))}; "
                              f"its options are: {', '.join(fields) or 'none'}")
    values = {}
    for name, f in fields.items():
        if name in given:
            values[name] = _checked(what, name, given[name], hints[name], f.metadata)
        elif f.default is MISSING and f.default_factory is MISSING:
            help_text = f" ({f.metadata['help']})" if f.metadata.get("help") else ""
            section = what.split()[0]  # "proposer" or "verifier"
            raise ConfigError(f"{what} needs option '{name}'{help_text}: set {section}.{name} in the config, "
                              f"or --set {section}.{name}=...")
    instance = schema(**values)
    problem = instance.check() if hasattr(instance, "check") else None
    if problem:
        raise ConfigError(f"{what}: {problem}")
    return instance


def _checked(what: str, name: str, value: Any, hint: Any, meta: dict) -> Any:
    allowed, optional = _unwrap(hint)
    if value is None and optional:
        return None
    origin = typing.get_origin(allowed)
    if origin in (list, tuple, Sequence) or allowed in (list, tuple):
        (item,) = typing.get_args(allowed)[:1] or (Any,)
        if not isinstance(value, (list, tuple)):
            raise _type_error(what, name, value, hint)
        return [_scalar(what, name, v, item, meta, hint) for v in value]
    return _scalar(what, name, value, allowed, meta, hint)


def _scalar(what: str, name: str, value: Any, kind: Any, meta: dict, hint: Any) -> Any:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise _type_error(what, name, value, hint)
    _check_range(what, name, value, meta)
    return float(value) if kind is float else value


def _check_range(what: str, name: str, value: Any, meta: dict) -> None:
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{what}: option '{name}' must be one of {', '.join(map(str, meta['choices']))} "
                          f"(got {value!r})")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    bounds = [(meta.get("ge"), lambda b: value >= b, ">="), (meta.get("gt"), lambda b: value > b, ">"),
              (meta.get("le"), lambda b: value <= b, "<="), (meta.get("lt"), lambda b: value < b, "<")]
    if any(bound is not None and not holds(bound) for bound, holds, _ in bounds):
        limits = " and ".join(f"{sign} {bound}" for bound, _, sign in bounds if bound is not None)
        raise ConfigError(f"{what}: option '{name}' must be {limits} (got {value!r})")


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(hint))
    return hint, False


def _type_name(hint: Any) -> str:
    allowed, optional = _unwrap(hint)
    origin = typing.get_origin(allowed)
    if origin in (list, tuple, Sequence):
        name = f"list of {getattr(typing.get_args(allowed)[0], '__name__', 'any')}"
    else:
        name = getattr(allowed, "__name__", str(allowed))
    return f"{name} or null" if optional else name


def _type_error(what: str, name: str, value: Any, hint: Any) -> ConfigError:
    return ConfigError(f"{what}: option '{name}' must be {_type_name(hint)} (got {value!r})")
