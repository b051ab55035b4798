"""The registry that hooks fill: proposer and verifier factories by name, with their provenance."""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from specplug.errors import ConfigError, SpecplugError, closest
from specplug.metadata import GREEDY_TEMPERATURE
from specplug.options import describe, parse_options

Kind = Literal["proposer", "verifier"]
RESULT_METHOD = {"proposer": "propose", "verifier": "verify"}  # what a factory's result must have


@dataclass(frozen=True)
class ProposerCapabilities:
    draft_probs: bool = False  # returns draft probabilities (sampled drafts) for rejection sampling
    needs_target: bool = False  # drafts with the target model's weights (the engine must share them)
    stateful: bool = False  # keeps per-row state between steps (freed by ``release``)


@dataclass(frozen=True)
class VerifierCapabilities:
    sampling: bool = True  # verifies rows with temperature > 0


@dataclass(frozen=True)
class Entry:
    """One registered proposer or verifier."""

    name: str
    kind: Kind
    factory: Callable[..., Any]
    plugin: str  # plugin name in the plugin manager (module name for built-ins)
    distribution: tuple[str, str] | None  # (name, version) of the package that provides it
    options: type | None = None  # the option schema (a dataclass); None: the factory's keyword parameters
    capabilities: ProposerCapabilities | VerifierCapabilities | None = None

    def describe_options(self) -> list[dict[str, Any]]:
        if self.options is not None:
            return [info.as_dict() for info in describe(self.options)]
        params = inspect.signature(self.factory).parameters.values()
        return [{"name": p.name, "type": "any", "default": None if p.default is p.empty else p.default,
                 "required": p.default is p.empty, "help": ""}
                for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


@dataclass(frozen=True)
class Command:
    """A command a plugin adds to the ``specplug`` command line."""

    name: str
    help: str
    configure: Callable[[Any], None] | str  # configure(parser) adds its arguments; or "module:function"
    run: Callable[[Any], int] | str  # run(args) -> exit status, or "module:function", imported when it runs
    plugin: str
    group: str | None = None  # None: ``specplug NAME``; "tune": ``specplug tune NAME``

    @property
    def full_name(self) -> str:
        return " ".join(filter(None, (self.group, self.name)))

    def runner(self) -> Callable[[Any], int]:
        return _resolve(self.run)

    def configurer(self) -> Callable[[Any], None]:
        return _resolve(self.configure)


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or the function a "module:function" string names (imported now)."""
    if callable(target):
        return target
    module, _, function = target.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise SpecplugError(f"cannot load '{target}' ({exc}): the plugin that registered this command names a "
                            "module:function that is not installed; reinstall or block it with "
                            "SPECPLUG_BLOCK_PLUGINS") from None



@dataclass
class Registry:
    """Everything the plugins registered. Built by ``specplug.plugins.load_registry``."""

    entries: dict[tuple[Kind, str], Entry] = field(default_factory=dict)
    commands: dict[tuple[str | None, str], Command] = field(default_factory=dict)  # by (group, name)
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

    def check_choice(self, kind: Kind, name: str, options: dict[str, Any]) -> Any:
        """Raise ConfigError unless ``name`` is registered and ``options`` fit it; return the parsed options."""
        entry = self.get(kind, name)
        if entry.options is not None:
            return parse_options(f"{kind} '{name}'", entry.options, options)
        check_options(f"{kind} '{name}'", entry.factory, options)
        return options

    def create(self, kind: Kind, name: str, *args: Any, options: dict[str, Any]) -> Any:
        """Call the factory registered as ``name`` with ``options`` checked first; check what it returns."""
        entry = self.get(kind, name)
        parsed = self.check_choice(kind, name, options)
        result = entry.factory(*args, parsed) if entry.options is not None else entry.factory(*args, **options)
        if not callable(getattr(result, RESULT_METHOD[kind], None)):
            raise ConfigError(f"{kind} '{name}' from plugin '{entry.plugin}': its factory returned "
                              f"{type(result).__name__!r}, not a {kind} (an object with a "
                              f"{RESULT_METHOD[kind]}() method): a bug in that plugin")
        return result

    def check_config(self, proposers: list[tuple[str, dict[str, Any]]], verifier: tuple[str, dict[str, Any]],
                     temperature: float) -> None:
        """Every chosen plugin exists and takes its options, and the verifier can do what the config asks."""
        for name, options in proposers:
            self.check_choice("proposer", name, options)
        self.check_choice("verifier", *verifier)
        capabilities = self.get("verifier", verifier[0]).capabilities
        sampled = temperature >= GREEDY_TEMPERATURE
        if sampled and isinstance(capabilities, VerifierCapabilities) and not capabilities.sampling:
            raise ConfigError(f"verifier '{verifier[0]}' cannot verify sampled rows and sampling.temperature is "
                              f"{temperature}: set temperature 0, or use a verifier that samples (rejection)")


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
    """The object hooks receive as ``register``: ``register.proposer(name, factory)``,
    ``register.verifier(...)``, ``register.command(...)``, ``register.tuner(...)``."""

    def __init__(self, registry: Registry, plugin: str, distribution: tuple[str, str] | None):
        self._registry = registry
        self._plugin = plugin
        self._distribution = distribution

    def __repr__(self) -> str:
        return f"Registrar(plugin={self._plugin!r})"

    def proposer(self, name: str, factory: Callable[..., Any], options: type | None = None,
                 capabilities: ProposerCapabilities | None = None) -> None:
        """Register a proposer factory: ``factory(context, options) -> Proposer`` where ``options`` is an
        instance of the ``options`` schema (``specplug.options``); without a schema,
        ``factory(context, **options)`` and its keyword-only parameters are the options."""
        self._add("proposer", name, factory, options, capabilities or ProposerCapabilities())

    def verifier(self, name: str, factory: Callable[..., Any], options: type | None = None,
                 capabilities: VerifierCapabilities | None = None) -> None:
        """Register a verifier factory: ``factory(options)`` with a schema, else ``factory(**options)``."""
        self._add("verifier", name, factory, options, capabilities or VerifierCapabilities())

    def command(self, name: str, help: str, configure: Callable[[Any], None] | str,
                run: Callable[[Any], int] | str) -> None:
        """Add ``specplug NAME``: ``configure(parser)`` adds its arguments to an argparse parser,
        ``run(args)`` does the work and returns the exit status (a ``SpecplugError`` it raises is printed
        as one line). Each may be "module:function", imported only when ``specplug NAME`` is given (as an
        entry point is): so one module can hold a command's arguments, defaults and work, and registering
        it costs no import."""
        self._add_command(Command(name, help, configure, run, self._plugin))

    def tuner(self, name: str, help: str, configure: Callable[[Any], None] | str,
              run: Callable[[Any], int] | str) -> None:
        """Add ``specplug tune NAME`` (the same contract as ``command``)."""
        self._add_command(Command(name, help, configure, run, self._plugin, group="tune"))

    def _add_command(self, command: Command) -> None:
        key = (command.group, command.name)
        first = self._registry.commands.get(key)
        if first is not None:
            warnings.warn(f"command '{command.full_name}' from plugin '{self._plugin}' ignored: plugin '{first.plugin}' added "
                          f"it first (block one with SPECPLUG_BLOCK_PLUGINS={self._plugin})", stacklevel=3)
            return
        self._registry.commands[key] = command

    def _add(self, kind: Kind, name: str, factory: Callable[..., Any], options: type | None,
             capabilities: ProposerCapabilities | VerifierCapabilities) -> None:
        key = (kind, name)
        if key in self._registry.entries:
            first = self._registry.entries[key].plugin
            warnings.warn(
                f"{kind} '{name}' from plugin '{self._plugin}' ignored: plugin '{first}' registered it "
                f"first (block one with SPECPLUG_BLOCK_PLUGINS={self._plugin})",
                stacklevel=3,
            )
            return
        self._registry.entries[key] = Entry(name, kind, factory, self._plugin, self._distribution, options,
                                            capabilities)
