from __future__ import annotations

import importlib.metadata
import sys

import pytest

from specplug import hookimpl
from specplug.errors import ConfigError
from specplug.metadata import Draft, ProposerContext
from specplug.plugins import DEFAULT_PLUGINS, PluginLoadWarning, load_registry, make_plugin_manager
from specplug.proposers.base import Proposer


class EchoProposer(Proposer):
    name = "echo"

    def __init__(self, token):
        self.token = token

    def propose(self, requests):
        return [Draft([self.token] * r.max_draft_tokens) for r in requests]


class EchoPlugin:
    @hookimpl
    def register_proposers(self, register):
        register.proposer("echo", lambda context, *, token=7: EchoProposer(token))


def test_builtins_register_through_the_hooks(plugin_manager):
    registry = load_registry(plugin_manager)
    assert registry.names("proposer") == ["draft_model", "eagle3", "layerskip", "ngram", "none", "suffix"]
    assert registry.names("verifier") == ["greedy", "rejection"]
    entry = registry.get("proposer", "ngram")
    assert entry.plugin == "specplug.proposers.ngram" and entry.plugin in DEFAULT_PLUGINS
    assert entry.distribution == ("specplug", importlib.metadata.version("specplug"))


def test_a_plugin_object_adds_a_proposer_with_checked_options(plugin_manager):
    plugin_manager.register(EchoPlugin(), name="echo-plugin")
    registry = load_registry(plugin_manager)
    assert registry.get("proposer", "echo").plugin == "echo-plugin"
    context = ProposerContext(num_speculative_tokens=3, vocab_size=10)
    proposer = registry.create("proposer", "echo", context, options={"token": 5})
    assert proposer.token == 5
    with pytest.raises(ConfigError, match="has no option 'tokn' \\(did you mean 'token'\\?\\)"):
        registry.create("proposer", "echo", context, options={"tokn": 5})


def test_unknown_proposer_lists_the_known_ones(plugin_manager):
    with pytest.raises(ConfigError, match="unknown proposer 'ngarm' \\(did you mean 'ngram'\\?\\); "
                                          "known proposers: draft_model, eagle3, layerskip, ngram, none, suffix"):
        load_registry(plugin_manager).get("proposer", "ngarm")


def test_a_duplicate_name_warns_and_the_first_wins(plugin_manager):
    class Shadow:
        @hookimpl
        def register_proposers(self, register):
            register.proposer("ngram", lambda context: None)

    plugin_manager.register(Shadow(), name="shadow")
    with pytest.warns(UserWarning, match="proposer 'ngram' from plugin 'shadow' ignored"):
        registry = load_registry(plugin_manager)
    assert registry.get("proposer", "ngram").plugin == "specplug.proposers.ngram"


def test_blocking_and_disabling_autoload(monkeypatch):
    monkeypatch.setenv("SPECPLUG_BLOCK_PLUGINS", "specplug.proposers.ngram")
    registry = load_registry(make_plugin_manager())
    assert "ngram" not in registry.names("proposer") and "none" in registry.names("proposer")
    monkeypatch.delenv("SPECPLUG_BLOCK_PLUGINS")
    monkeypatch.setenv("SPECPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = make_plugin_manager()
    assert {name for name, _ in pm.list_name_plugin()} == set(DEFAULT_PLUGINS)


def test_a_broken_entry_point_is_named_in_one_warning(monkeypatch):
    class BrokenEntryPoint:
        name, dist = "broken", None

        def load(self):
            raise ImportError("No module named 'missing_dependency'")

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [BrokenEntryPoint()])
    with pytest.warns(PluginLoadWarning) as caught:
        pm = make_plugin_manager(load_entrypoints=True)
    assert len(caught) == 1 and "plugin 'broken'" in str(caught[0].message)
    assert "ngram" in load_registry(pm).names("proposer")


def test_hook_tracing_writes_calls_to_stderr(monkeypatch, capsys):
    monkeypatch.setenv("SPECPLUG_TRACE_HOOKS", "1")
    load_registry(make_plugin_manager(load_entrypoints=False))
    err = capsys.readouterr().err
    assert "register_proposers" in err and "register_verifiers" in err


def test_no_global_plugin_manager():
    assert make_plugin_manager(False) is not make_plugin_manager(False)
    assert "specplug.plugins" in sys.modules  # imported, yet holds no manager instance
    assert not [v for v in vars(sys.modules["specplug.plugins"]).values()
                if type(v).__name__ == "PluginManager" and not isinstance(v, type)]
