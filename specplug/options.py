"""Option schemas: what a plugin or a config section accepts, declared once as a dataclass.

    @dataclass(frozen=True)
    class NgramOptions:
        min_n: int = option(1, "shortest n-gram to look up", ge=1, le=64)
        max_n: int = option(4, "longest n-gram to look up", ge=1, le=64)

        def check(self) -> str | None:          # optional: rules across fields
            return None if self.min_n <= self.max_n else "min_n must not exceed max_n"

A field without a default is required. Types: int, float, bool, str, list[int], list[str], dict[K, V] of
these, any of these or None, ``Any`` (taken as given), and another schema (a nested section).
``parse_options`` checks a plugin's options against its schema, ``parse_section`` a config section (the
same rules; messages name ``section.key``): unknown keys with a did-you-mean, missing required keys,
types, ranges and choices. Each returns the schema's instance.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from specplug.errors import ConfigError, closest

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, help: str = "", *, ge: float | None = None, le: float | None = None,
           gt: float | None = None, lt: float | None = None, choices: Sequence[Any] | None = None,
           hint: str = "", secret: bool = False) -> Any:
    """A schema field: its default (none: required; a schema class: that section's defaults), help text,
    bounds (applied to each item of a list), ``hint`` (the fix, appended to its error messages) and
    ``secret`` (its value never shown in a message)."""
    meta = {"help": help, "ge": ge, "le": le, "gt": gt, "lt": lt, "choices": tuple(choices) if choices else None,
            "hint": hint, "secret": secret}
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
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
    hints = _hints(schema)
    infos = []
    for f in dataclasses.fields(schema):
        required = _required(f)
        default = None if required else (f.default if f.default is not MISSING else f.default_factory())
        infos.append(OptionInfo(f.name, _type_name(hints[f.name]), default, required, f.metadata.get("help", "")))
    return infos


def defaults(schema: type) -> dict[str, Any]:
    """The mapping a config file would hold for ``schema``'s defaults (nested sections as mappings)."""
    return dataclasses.asdict(schema())


class _PluginNames:
    """How messages name a plugin's options: ``proposer 'ngram': option 'min_n'``."""

    def __init__(self, what: str):
        self.what, self.section = what, what.split()[0]  # "proposer 'ngram'", "proposer"

    def key(self, name: str) -> str:
        return f"{self.what}: option '{name}'"

    def unknown(self, key: str, known: list[str]) -> str:
        return f"{self.what} has no option '{key}'{closest(key, known)}; its options are: {', '.join(known) or 'none'}"

    def missing(self, name: str, help_text: str) -> str:
        return (f"{self.what} needs option '{name}'{help_text}: set {self.section}.{name} in the config, "
                f"or --set {self.section}.{name}=...")

    def rule(self, problem: str) -> str:
        return f"{self.what}: {problem}"

    def whole(self) -> str:
        return f"{self.what}'s options"

    def nested(self, name: str) -> _SectionNames:
        return _SectionNames(f"{self.section}.{name}")


class _SectionNames:
    """How messages name a config section's keys: ``serve.max_batch_size``."""

    def __init__(self, path: str):
        self.path = path  # "" at the top level

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def unknown(self, key: str, known: list[str]) -> str:
        return f"unknown config key '{self.key(key)}'{closest(key, known)}; known keys: {', '.join(known)}"

    def missing(self, name: str, help_text: str) -> str:
        return f"{self.key(name)} is required{help_text}: set it in the config, or --set {self.key(name)}=..."

    def rule(self, problem: str) -> str:
        return problem

    def whole(self) -> str:
        return self.path or "the config"

    def nested(self, name: str) -> _SectionNames:
        return _SectionNames(self.key(name))


def parse_options(what: str, schema: type, given: Mapping[str, Any]) -> Any:
    """A plugin's options ``given`` checked against ``schema`` (``what`` names the plugin): its instance."""
    return _parse(_PluginNames(what), schema, given)


def parse_section(path: str, schema: type, given: Any,
                  sections: Mapping[str, type] | None = None) -> tuple[Any, dict[str, Any]]:
    """A config section ``given`` (at ``path``, "" for the top level) checked against ``schema``.

    ``sections`` names further keys the schema leaves to others (an engine adapter's section) with their
    schemas. Returns (the schema's instance, {key: instance} for those of them ``given`` holds)."""
    sections = sections or {}
    names = _SectionNames(path)
    if not isinstance(given, Mapping):
        return _parse(names, schema, given), {}
    taken = {key: _parse(names.nested(key), sections[key], value) for key, value in given.items()
             if key in sections}
    rest = {key: value for key, value in given.items() if key not in taken}
    return _parse(names, schema, rest, also=list(sections)), taken


def _parse(names: _PluginNames | _SectionNames, schema: type, given: Any, also: Sequence[str] = ()) -> Any:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{names.whole()} must be a mapping ({', '.join(fields)}), not {value_kind(given)}")
    for key in given:
        if key not in fields:
            raise ConfigError(names.unknown(str(key), [*fields, *also]))
    hints = _hints(schema)
    values = {}
    for name, f in fields.items():
        if name in given:
            values[name] = _checked(names, name, given[name], hints[name], f.metadata)
        elif _required(f):
            help_text = f" ({f.metadata['help']})" if f.metadata.get("help") else ""
            raise ConfigError(names.missing(name, help_text))
    instance = schema(**values)
    problem = instance.check() if hasattr(instance, "check") else None
    if problem:
        raise ConfigError(names.rule(problem))
    return instance


@functools.cache
def _hints(schema: type) -> dict[str, Any]:
    """A schema's resolved field types, once per schema: every server request checks its sampling fields."""
    return typing.get_type_hints(schema)


def value_kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _required(f: dataclasses.Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _checked(names, name: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    allowed, optional = _unwrap(hint)
    if value is None and optional:
        return None
    if isinstance(allowed, type) and dataclasses.is_dataclass(allowed):
        return _parse(names.nested(name), allowed, value)
    origin = typing.get_origin(allowed)
    if origin in (list, tuple, Sequence) or allowed in (list, tuple):
        (item,) = typing.get_args(allowed)[:1] or (Any,)
        if not isinstance(value, (list, tuple)):
            raise _type_error(names, name, value, hint, meta)
        return [_scalar(names, name, v, item, meta, hint) for v in value]
    if origin in (dict, Mapping) or allowed is dict:
        key_type, value_type = typing.get_args(allowed) or (Any, Any)
        if not isinstance(value, Mapping):
            raise _type_error(names, name, value, hint, meta)
        return {_scalar(names, name, k, key_type, {}, hint): _scalar(names, name, v, value_type, {}, hint)
                for k, v in value.items()}
    return _scalar(names, name, value, allowed, meta, hint)


def _scalar(names, name: str, value: Any, kind: Any, meta: Mapping[str, Any], hint: Any) -> Any:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    elif kind is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise _type_error(names, name, value, hint, meta)
    _check_range(names, name, value, meta, hint)
    return float(value) if kind is float else value


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


def _check_range(names, name: str, value: Any, meta: Mapping[str, Any], hint: Any) -> None:
    choices = meta.get("choices")
    if choices and not any(value == c and type(value) is type(c) for c in choices):  # True is not 1
        shown = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
        raise ConfigError(_message(names, name, f"one of {shown}", value, meta))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    bounds = [(meta.get("ge"), lambda b: value >= b), (meta.get("gt"), lambda b: value > b),
              (meta.get("le"), lambda b: value <= b), (meta.get("lt"), lambda b: value < b)]
    if any(bound is not None and not holds(bound) for bound, holds in bounds):
        raise _type_error(names, name, value, hint, meta)


def _limits(meta: Mapping[str, Any]) -> str:
    """'from 1 to 64', 'in (0, 1]', '>= 0'."""
    low = meta["ge"] if meta.get("ge") is not None else meta.get("gt")
    high = meta["le"] if meta.get("le") is not None else meta.get("lt")
    if low is not None and high is not None:
        if meta.get("ge") is not None and meta.get("le") is not None:
            return f"from {low} to {high}"
        return f"in {'[' if meta.get('ge') is not None else '('}{low}, {high}{']' if meta.get('le') is not None else ')'}"
    sign = next(s for key, s in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if meta.get(key) is not None)
    return f"{sign} {low if low is not None else high}"


def _message(names, name: str, wanted: str, value: Any, meta: Mapping[str, Any]) -> str:
    shown = "its value is not shown" if meta.get("secret") else f"got {value!r}"
    fix = f"; {meta['hint']}" if meta.get("hint") else ""
    return f"{names.key(name)} must be {wanted} ({shown}){fix}"


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(hint))
    return hint, False


PHRASES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}
PLURALS = {int: "integers", float: "finite numbers", bool: "booleans", str: "strings"}


def _phrase(kind: Any) -> str:
    """How a message names a type: 'an integer', 'a list of strings', 'a mapping'."""
    origin = typing.get_origin(kind)
    if origin in (list, tuple, Sequence) or kind in (list, tuple):
        item = (typing.get_args(kind) or (Any,))[0]
        return f"a list of {PLURALS.get(item, 'values')}"
    if origin in (dict, Mapping) or kind is dict:
        key, value = typing.get_args(kind) or (Any, Any)
        return f"a mapping of {PLURALS[key]} to {PLURALS[value]}" if key in PLURALS and value in PLURALS else "a mapping"
    return PHRASES.get(kind, "a value")


def _type_name(hint: Any) -> str:
    allowed, optional = _unwrap(hint)
    origin = typing.get_origin(allowed)
    if origin in (list, tuple, Sequence):
        name = f"list of {getattr(typing.get_args(allowed)[0], '__name__', 'any')}"
    else:
        name = getattr(allowed, "__name__", str(allowed))
    return f"{name} or null" if optional else name


def _type_error(names, name: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> ConfigError:
    allowed, optional = _unwrap(hint)
    limits = f" {_limits(meta)}" if any(meta.get(key) is not None for key in ("ge", "gt", "le", "lt")) else ""
    wanted = _phrase(allowed) + limits + (" or null" if optional else "")
    return ConfigError(_message(names, name, wanted, value, meta))
