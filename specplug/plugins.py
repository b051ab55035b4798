"""Plugin discovery at start-up: built-ins and the ``specplug`` entry-point group, via pluggy.

Environment switches:
- ``SPECPLUG_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry-point plugins (built-ins only).
- ``SPECPLUG_BLOCK_PLUGINS=a,b``: never register the plugins with these names (entry-point names,
  or the module names of built-ins).
- ``SPECPLUG_TRACE_HOOKS=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import warnings
from typing import Any

import pluggy

from specplug import hookspecs
from specplug.registry import Registrar, Registry

ENTRY_POINT_GROUP = "specplug"

DEFAULT_PLUGINS = (
    "specplug.proposers.ngram",
    "specplug.proposers.none",
    "specplug.proposers.draft_model",
    "specplug.proposers.layerskip",
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


def make_plugin_manager(load_entrypoints: bool | None = None) -> PluginManager:
    """Return a fresh plugin manager with the built-ins and (unless disabled) entry-point plugins.

    Each call builds a new manager: there is no global one to reset.
    """
    pm = PluginManager()
    for name in blocked_plugins():
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if not pm.is_blocked(module_name):
            pm.register(importlib.import_module(module_name), name=module_name)
            pm.distributions[module_name] = _own_distribution()
    if load_entrypoints is None:
        load_entrypoints = not _env_flag("SPECPLUG_DISABLE_PLUGIN_AUTOLOAD")
    if load_entrypoints:
        _load_entrypoint_plugins(pm)
    if _env_flag("SPECPLUG_TRACE_HOOKS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def _load_entrypoint_plugins(pm: PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
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


def load_registry(pm: PluginManager | None = None) -> Registry:
    """Call the registration hooks of every plugin and return what they registered.

    Each plugin's hooks are called on their own so that every entry records which plugin gave it.
    """
    pm = pm or make_plugin_manager()
    registry = Registry()
    named = pm.list_name_plugin()  # registration order: built-ins first
    for hook_name in ("register_proposers", "register_verifiers"):
        for name, plugin in named:
            others = [p for _, p in named if p is not plugin]
            call = pm.subset_hook_caller(hook_name, remove_plugins=others)
            call(register=Registrar(registry, name, pm.distributions.get(name)))
    return registry
