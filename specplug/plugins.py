"""Plugin discovery at start-up: built-ins and the ``specplug`` entry-point group, via pluggy.

Environment switches:
- ``SPECPLUG_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry-point plugins (built-ins only).
- ``SPECPLUG_BLOCK_PLUGINS=a,b``: never register the plugins with these names (entry-point names,
  or the module names of built-ins). A name that matches no plugin is warned about; asking for a
  proposer or verifier that a blocked plugin provides names the plugin and the variable.
- ``SPECPLUG_TRACE_HOOKS=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pluggy

from specplug import hookspecs
from specplug.errors import closest
from specplug.hookspecs import API_VERSION, COMPATIBLE_API_VERSIONS
from specplug.registry import Kind, Registrar, Registry

ENTRY_POINT_GROUP = "specplug"

DEFAULT_PLUGINS = (
    "specplug.proposers.ngram",
    "specplug.proposers.none",
    "specplug.proposers.draft_model",
    "specplug.proposers.layerskip",
    "specplug.proposers.suffix",
    "specplug.proposers.eagle3",
    "specplug.verifiers.builtin",
)


class PluginLoadWarning(UserWarning):
    """A third-party plugin failed to import; specplug keeps going without it."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def blocked_plugins() -> set[str]:
    return {n.strip() for n in os.environ.get("SPECPLUG_BLOCK_PLUGINS", "").split(",") if n.strip()}


def _own_distribution() -> tuple[str, str]:
    return ("specplug", importlib.metadata.version("specplug"))


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the distribution (name, version) that provided each plugin."""

    def __init__(self) -> None:
        super().__init__("specplug")
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple[str, str] | None] = {}
        self.blocked_loaders: dict[str, Callable[[], Any]] = {}  # plugins not registered, by name


def make_plugin_manager(load_entrypoints: bool | None = None) -> PluginManager:
    """Return a fresh plugin manager with the built-ins and (unless disabled) entry-point plugins.

    Each call builds a new manager: there is no global one to reset.
    """
    pm = PluginManager()
    blocked = blocked_plugins()
    for name in blocked:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if pm.is_blocked(module_name):
            pm.blocked_loaders[module_name] = functools.partial(importlib.import_module, module_name)
        else:
            pm.register(importlib.import_module(module_name), name=module_name)
            pm.distributions[module_name] = _own_distribution()
    if load_entrypoints is None:
        load_entrypoints = not _env_flag("SPECPLUG_DISABLE_PLUGIN_AUTOLOAD")
    if load_entrypoints:
        _load_entrypoint_plugins(pm)
    _warn_unknown_blocked(blocked)
    warn_unknown_hooks(pm)
    if _env_flag("SPECPLUG_TRACE_HOOKS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def _load_entrypoint_plugins(pm: PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name):
            pm.blocked_loaders[ep.name] = ep.load
            continue
        if pm.has_plugin(ep.name):
            continue
        dist = (ep.dist.name, ep.dist.version) if ep.dist else None
        try:
            plugin: Any = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            where = f" from {dist[0]} {dist[1]}" if dist else ""
            warnings.warn(
                f"plugin '{ep.name}'{where} failed to load ({type(exc).__name__}: {exc}); "
                f"continuing without it (uninstall it or set SPECPLUG_BLOCK_PLUGINS={ep.name})",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        pm.distributions[ep.name] = dist


def _warn_unknown_blocked(blocked: set[str]) -> None:
    """One warning for the names in SPECPLUG_BLOCK_PLUGINS that match no built-in or installed plugin."""
    if not blocked:
        return
    known = [*DEFAULT_PLUGINS, *sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})]
    unknown = sorted(blocked - set(known))
    if unknown:
        names = ", ".join(f"'{name}'{closest(name, known)}" for name in unknown)
        warnings.warn(f"SPECPLUG_BLOCK_PLUGINS names no known plugin: {names}; known plugins: {', '.join(known)}",
                      stacklevel=3)


def _blocked_provider(loaders: dict[str, Callable[[], Any]]) -> Callable[[Kind, str], str | None]:
    """Which blocked plugin would register (kind, name); the plugins are loaded only when asked."""

    def provider(kind: Kind, name: str) -> str | None:
        return next((plugin for plugin, load in loaders.items() if (kind, name) in _would_register(plugin, load)),
                    None)

    return provider


def _would_register(plugin_name: str, load: Callable[[], Any]) -> set[tuple[Kind, str]]:
    scratch = PluginManager()
    try:
        scratch.register(load(), name=plugin_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return set(load_registry(scratch).entries)
    except Exception:  # a plugin blocked because it is broken cannot say what it provides
        return set()


def load_registry(pm: PluginManager | None = None) -> Registry:
    """Call the registration hooks of every plugin and return what they registered.

    Each plugin's hooks are called on their own, so that every entry records which plugin gave it, and
    so that a plugin that raises (or was built for another interface version) is skipped with one
    warning while the others register.
    """
    pm = pm or make_plugin_manager()
    registry = Registry(blocked_provider=_blocked_provider(pm.blocked_loaders))
    named = [(name, plugin) for name, plugin in pm.list_name_plugin() if _compatible(name, plugin)]
    for name, plugin in named:  # registration order: built-ins first
        others = [p for _, p in pm.list_name_plugin() if p is not plugin]
        before = dict(registry.entries), dict(registry.commands)
        try:
            for hook_name in ("register_proposers", "register_verifiers", "register_commands"):
                call = pm.subset_hook_caller(hook_name, remove_plugins=others)
                call(register=Registrar(registry, name, pm.distributions.get(name)))
        except Exception as exc:  # a third-party plugin's bug must not take the others down
            registry.entries, registry.commands = before
            warnings.warn(f"plugin '{name}' failed while registering ({type(exc).__name__}: {exc}); what it "
                          "provides is skipped", stacklevel=2)
    return registry


def _compatible(name: str, plugin: Any) -> bool:
    declared = getattr(plugin, "specplug_api_version", None)
    if declared is None or declared in COMPATIBLE_API_VERSIONS:
        return True
    warnings.warn(f"plugin '{name}' is built for specplug plugin API {declared!r}; this specplug speaks "
                  f"{API_VERSION}: it is skipped (install a release of it made for API {API_VERSION})", stacklevel=3)
    return False


def warn_unknown_hooks(pm: PluginManager) -> None:
    """One warning per hook a plugin implements that specplug does not define (a misspelling, usually)."""
    known = sorted(name for name, caller in vars(pm.hook).items() if getattr(caller, "spec", None) is not None)
    for hook_name, caller in vars(pm.hook).items():
        if getattr(caller, "spec", None) is None and hasattr(caller, "get_hookimpls"):
            for impl in caller.get_hookimpls():
                warnings.warn(f"plugin '{impl.plugin_name}' implements '{hook_name}', which is not a specplug hook"
                              f"{closest(hook_name, known)}; known hooks: {', '.join(known)}", stacklevel=3)
