"""specplug's public plugin API: everything a proposer, verifier or command plugin needs, in one module.

A third-party package imports from here (and, in its tests, from ``specplug.testing``) and from nowhere
else in specplug: what is not here may move between releases. The surface is tied to
``API_VERSION`` (declare ``specplug_api_version = API_VERSION`` in your plugin): any change to the names or
signatures below raises it, and ``tests/test_api.py`` fails on a change made without the bump
(``python -m specplug.api`` prints the surface it compares).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys

from specplug.arguments import add_config_args, check_sizes
from specplug.config import Config, PluginChoice, load_config
from specplug.errors import ConfigError, SpecplugError
from specplug.hookspecs import API_VERSION, hookimpl
from specplug.metadata import (Draft, DraftRequest, ProposerContext, SamplingParams, VerifyInput, VerifyOutcome,
                               VerifyOutput)
from specplug.models.llama import CompactLlama
from specplug.models.loader import load_compact_model, load_tokenizer, resolve_model
from specplug.options import NoOptions, option
from specplug.plugins import load_registry, make_plugin_manager
from specplug.proposers.base import Proposer, proposer_name
from specplug.registry import ProposerCapabilities, Registrar, Registry, VerifierCapabilities
from specplug.verifiers.base import Verifier

__all__ = [
    # hooks and registration
    "API_VERSION", "hookimpl", "Registrar", "Registry", "load_registry", "make_plugin_manager", "ProposerCapabilities",
    "VerifierCapabilities", "option", "NoOptions",
    # what flows between a host and a plugin
    "Proposer", "Verifier", "proposer_name", "Draft", "DraftRequest", "VerifyOutcome", "VerifyInput",
    "VerifyOutput", "ProposerContext", "SamplingParams",
    # errors
    "SpecplugError", "ConfigError",
    # configs and command-line arguments (plugin commands)
    "Config", "PluginChoice", "load_config", "add_config_args", "check_sizes",
    # models and tokenizers, for proposers that load their own
    "resolve_model", "load_tokenizer", "load_compact_model", "CompactLlama",
]


def surface() -> dict[str, str]:
    """Each public name's signature (classes: their dataclass fields and public methods), as text."""
    module = sys.modules[__name__]
    return {name: _describe(getattr(module, name)) for name in sorted(__all__)}


def _describe(obj) -> str:
    if isinstance(obj, int):
        return repr(obj)
    if inspect.isclass(obj):
        parts = []
        if dataclasses.is_dataclass(obj):
            parts.append("fields(" + ", ".join(f.name for f in dataclasses.fields(obj)) + ")")
        for name, member in sorted(vars(obj).items()):
            if not name.startswith("_") and callable(member):
                parts.append(f"{name}{_signature(member)}")
        return f"class {obj.__name__}: " + "; ".join(parts)
    return f"{getattr(obj, '__name__', type(obj).__name__)}{_signature(obj)}"


def _signature(obj) -> str:
    try:
        return re.sub(r" object at 0x[0-9a-f]+", "", str(inspect.signature(obj)))  # stable from run to run
    except (TypeError, ValueError):
        return "(...)"


if __name__ == "__main__":
    print(json.dumps({"api_version": API_VERSION, "surface": surface()}, indent=1))
