"""The registry that hooks fill: proposer and verifier factories by name, with their provenance."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from specplug.errors import ConfigError, closest

Kind = Literal["proposer", "verifier"]


@dataclass(frozen=True)
class Entry:
    """One registered proposer or verifier."""

    name: str
    kind: Kind
    factory: Callable[..., Any]
    plugin: str  # plugin name in the plugin manager (module name for built-ins)
    distribution: tuple[str, str] | None  # (name, version) of the package that provides it


@dataclass
class Registry:
    """Everything the plugins registered. Built by ``specplug.plugins.load_registry``."""

    entries: dict[tuple[Kind, str], Entry] = field(default_factory=dict)
    # which plugin, blocked by SPECPLUG_BLOCK_PLUGINS, would have registered (kind, name); None if none
    blocked_provider: Callable[[Kind, str], str | None] | None = None

    def names(self, kind: Kind) -> list[str]:
        return sorted(name for k, name in self.entries if k == kind)

    def get(self, kind: Kind, name: str) -> Entry:
        entry = self.entries.get((kind, name))
        if entry is None:
            raise self._missing(kind, name)
        return entry

    def _missing(self, kind: Kind, name: str) -> ConfigError:
        plugin = self.blocked_provider(kind, name) if self.blocked_provider else None
        if plugin:
            return ConfigError(f"{kind} '{name}' is provided by plugin '{plugin}', which SPECPLUG_BLOCK_PLUGINS "
                               "blocks: remove it from that variable")
        known = ", ".join(self.names(kind)) or "none"
        return ConfigError(
            f"unknown {kind} '{name}'{closest(name, self.names(kind))}; known {kind}s: {known}. "
            f"Install the package that provides it, or pick a known one."
        )

    def check_choice(self, kind: Kind, name: str, options: dict[str, Any]) -> None:
        """Raise ConfigError unless ``name`` is registered and takes every key of ``options``."""
        check_options(f"{kind} '{name}'", self.get(kind, name).factory, options)

    def create(self, kind: Kind, name: str, *args: Any, options: dict[str, Any]) -> Any:
        """Call the factory registered as ``name`` with ``options``, rejecting keys it does not take."""
        self.check_choice(kind, name, options)
        return self.get(kind, name).factory(*args, **options)


def check_options(what: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Raise ConfigError when ``options`` holds a key that ``factory`` has no keyword parameter for."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for key in options:
        if key not in accepted:
            raise ConfigError(
                f"{what} has no option '{key}'{closest(key, accepted)}; "
                f"its options are: {', '.join(accepted) or 'none'}"
            )


class Registrar:
    """The object hooks receive as ``register``: ``register.proposer(name, factory)``."""

    def __init__(self, registry: Registry, plugin: str, distribution: tuple[str, str] | None):
        self._registry = registry
        self._plugin = plugin
        self._distribution = distribution

    def __repr__(self) -> str:
        return f"Registrar(plugin={self._plugin!r})"

    def proposer(self, name: str, factory: Callable[..., Any]) -> None:
        """Register a proposer factory: ``factory(context, **options) -> Proposer``."""
        self._add("proposer", name, factory)

    def verifier(self, name: str, factory: Callable[..., Any]) -> None:
        """Register a verifier factory: ``factory(**options) -> Verifier``."""
        self._add("verifier", name, factory)

    def _add(self, kind: Kind, name: str, factory: Callable[..., Any]) -> None:
        key = (kind, name)
        if key in self._registry.entries:
            first = self._registry.entries[key].plugin
            warnings.warn(
                f"{kind} '{name}' from plugin '{self._plugin}' ignored: plugin '{first}' registered it "
                f"first (block one with SPECPLUG_BLOCK_PLUGINS={self._plugin})",
                stacklevel=3,
            )
            return
        self._registry.entries[key] = Entry(name, kind, factory, self._plugin, self._distribution)
