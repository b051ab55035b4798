"""The plugin contract: option schemas, capabilities, isolation of broken plugins, interface version."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import pytest

from specplug import hookimpl
from specplug.hookspecs import API_VERSION
from specplug.config import load_config
from specplug.errors import ConfigError
from specplug.metadata import Draft, ProposerContext
from specplug.options import option
from specplug.plugins import load_registry, warn_unknown_hooks
from specplug.proposers.base import Proposer
from specplug.registry import ProposerCapabilities

CONTEXT = ProposerContext(4, 100)


class Fixed(Proposer):
    name = "fixed"

    def __init__(self, token: int):
        self.token = token

    def propose(self, requests):
        return [Draft([self.token] * r.max_draft_tokens) for r in requests]


@dataclass(frozen=True)
class FixedOptions:
    path: str = option(help="where the table lives")  # required
    token: int = option(7, "the token drafted", ge=0, lt=100)
    ratio: float = option(0.5, "a share", gt=0, le=1)
    mode: str = option("fast", "how", choices=("fast", "exact"))


class SchemaPlugin:
    @hookimpl
    def register_proposers(self, register):
        register.proposer("fixed", lambda context, options: Fixed(options.token), options=FixedOptions,
                          capabilities=ProposerCapabilities(stateful=False))


def registry_with(plugin_manager, *plugins):
    for plugin in plugins:
        plugin_manager.register(plugin)
    return load_registry(plugin_manager)


@pytest.mark.parametrize("options, message", [
    ({}, "proposer 'fixed' needs option 'path' (where the table lives)"),
    ({"path": 3}, "option 'path' must be a string (got 3)"),
    ({"path": "x", "token": 100}, "option 'token' must be an integer in [0, 100) (got 100)"),
    ({"path": "x", "token": 1.5}, "option 'token' must be an integer in [0, 100) (got 1.5)"),
    ({"path": "x", "ratio": 0}, "option 'ratio' must be a finite number in (0, 1] (got 0)"),
    ({"path": "x", "ratio": float("nan")}, "option 'ratio' must be a finite number in (0, 1] (got nan)"),
    ({"path": "x", "mode": "slow"}, "option 'mode' must be one of fast, exact (got 'slow')"),
    ({"path": "x", "tokn": 3}, "has no option 'tokn' (did you mean 'token'?)"),
])
def test_options_are_checked_through_the_schema(plugin_manager, options, message):
    registry = registry_with(plugin_manager, SchemaPlugin())
    with pytest.raises(ConfigError) as error:
        registry.create("proposer", "fixed", CONTEXT, options=options)
    assert message in str(error.value)


def test_schema_values_are_coerced_and_defaults_filled(plugin_manager):
    registry = registry_with(plugin_manager, SchemaPlugin())
    proposer = registry.create("proposer", "fixed", CONTEXT, options={"path": "t", "ratio": 1})
    assert proposer.token == 7
    parsed = registry.check_choice("proposer", "fixed", {"path": "t", "ratio": 1})
    assert parsed.ratio == 1.0 and isinstance(parsed.ratio, float)
    described = {o["name"]: o for o in registry.get("proposer", "fixed").describe_options()}
    assert described["path"]["required"] and described["token"] == {
        "name": "token", "type": "int", "default": 7, "required": False, "help": "the token drafted"}


def test_a_misspelt_hook_warns_naming_plugin_and_hook(plugin_manager):
    class Misspelt:
        @hookimpl
        def register_proposer(self, register):  # missing the s
            register.proposer("never", lambda context: None)

    plugin_manager.register(Misspelt(), name="misspelt")
    with pytest.warns(UserWarning, match="plugin 'misspelt' implements 'register_proposer', which is not a "
                                         "specplug hook \\(did you mean 'register_proposers'\\?\\)"):
        warn_unknown_hooks(plugin_manager)
    assert "never" not in load_registry(plugin_manager).names("proposer")


def test_a_plugin_that_raises_is_skipped_and_the_others_register(plugin_manager):
    class Raising:
        @hookimpl
        def register_proposers(self, register):
            register.proposer("half", lambda context: None)
            raise RuntimeError("boom")

    plugin_manager.register(Raising(), name="raising")
    plugin_manager.register(SchemaPlugin(), name="schema")
    with pytest.warns(UserWarning, match="plugin 'raising' failed while registering \\(RuntimeError: boom\\)"):
        registry = load_registry(plugin_manager)
    assert "fixed" in registry.names("proposer") and "ngram" in registry.names("proposer")
    assert "half" not in registry.names("proposer")  # nothing half-registered


def test_a_factory_that_returns_no_proposer_is_named(plugin_manager):
    class Wrong:
        @hookimpl
        def register_proposers(self, register):
            register.proposer("wrong", lambda context: "not a proposer")

    registry = registry_with(plugin_manager, Wrong())
    with pytest.raises(ConfigError, match="proposer 'wrong' from plugin '.*': its factory returned 'str', not a "
                                          "proposer"):
        registry.create("proposer", "wrong", CONTEXT, options={})


def test_a_plugin_for_another_interface_version_is_skipped(plugin_manager):
    class Future:
        specplug_api_version = API_VERSION + 1

        @hookimpl
        def register_proposers(self, register):
            register.proposer("future", lambda context: Fixed(1))

    plugin_manager.register(Future(), name="future-plugin")
    with pytest.warns(UserWarning, match=f"plugin 'future-plugin' is built for specplug plugin API {API_VERSION + 1}; "
                                         f"this specplug speaks {API_VERSION}: it is skipped"):
        registry = load_registry(plugin_manager)
    assert "future" not in registry.names("proposer")


def test_capability_mismatch_is_refused_at_start_up(plugin_manager):
    registry = load_registry(plugin_manager)
    config = load_config(overrides=["verifier.name=greedy", "sampling.temperature=0.7"])
    with pytest.raises(ConfigError, match="verifier 'greedy' cannot verify sampled rows and sampling.temperature "
                                          "is 0.7"):
        registry.check_config([(config.proposer.name, config.proposer.options)],
                              (config.verifier.name, config.verifier.options), config.sampling.temperature)
    assert registry.get("proposer", "layerskip").capabilities.needs_target
    assert registry.get("proposer", "draft_model").capabilities.draft_probs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.check_config([("ngram", {})], ("greedy", {}), 0.0)  # greedy rows: fine


def test_plugins_command_shows_options_and_capabilities(capsys):
    from specplug.cli import main

    assert main(["plugins", "draft_model"]) == 0
    out = capsys.readouterr().out
    assert "model (str, required)" in out and "capabilities: draft_probs, stateful" in out
    assert main(["plugins", "--json"]) == 0
    import json

    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert [o["name"] for o in rows["ngram"]["options"]] == ["min_n", "max_n"]
    assert rows["greedy"]["capabilities"] == {"sampling": False}


class CommandPlugin:
    """Adds ``specplug hello`` and ``specplug tune fixed``, as a third-party package would."""

    ran: list = []

    @hookimpl
    def register_commands(self, register):
        def configure(parser):
            parser.add_argument("--name", required=True)

        def run(args):
            if args.name == "bad":
                raise ConfigError("hello: --name bad is refused")
            CommandPlugin.ran.append((args.command, getattr(args, "tuner", None), args.name))
            return 3

        register.command("hello", "greet", configure, run)
        register.tuner("fixed", "tune the fixed proposer", configure, run)


def test_a_plugin_contributes_commands_and_tuners(plugin_manager, capsys):
    from specplug.cli import main

    registry = registry_with(plugin_manager, CommandPlugin())
    assert {c.full_name: c.plugin for c in registry.commands.values()} == {
        "hello": registry.commands[(None, "hello")].plugin, "tune fixed": registry.commands[("tune", "fixed")].plugin,
        "make-draft": "specplug.proposers.draft_model", "tune layerskip": "specplug.proposers.layerskip",
        "make-eagle3": "specplug.proposers.eagle3"}
    assert main(["hello", "--name", "x"], registry) == 3
    assert main(["tune", "fixed", "--name", "y"], registry) == 3
    assert CommandPlugin.ran == [("hello", None, "x"), ("tune", "fixed", "y")]
    assert main(["hello", "--name", "bad"], registry) == 2
    assert capsys.readouterr().err.strip() == "specplug: error: hello: --name bad is refused"
    with pytest.raises(SystemExit):
        main(["tune", "nothing"], registry)
    assert "invalid choice: 'nothing'" in capsys.readouterr().err


def test_a_command_module_is_imported_only_when_its_command_is_given(plugin_manager, tmp_path, monkeypatch,
                                                                      capsys):
    """configure and run as "module:function": one module holds a command, and other commands never import it."""
    from specplug.cli import main

    (tmp_path / "greeting_command.py").write_text(
        "def configure(parser):\n    parser.add_argument('--times', type=int, default=2, help='(default %(default)s)')\n"
        "def run(args):\n    print('hi ' * args.times)\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Lazy:
        @hookimpl
        def register_commands(self, register):
            register.command("greet", "say hi", "greeting_command:configure", "greeting_command:run")

    registry = registry_with(plugin_manager, Lazy())
    assert main(["plugins", "--json"], registry) == 0
    assert "greeting_command" not in sys.modules
    capsys.readouterr()
    assert main(["greet", "--times", "3"], registry) == 0
    assert capsys.readouterr().out.strip() == "hi hi hi"


def test_a_command_module_that_does_not_import_is_one_line_naming_it(plugin_manager, capsys):
    from specplug.cli import main

    class Missing:
        @hookimpl
        def register_commands(self, register):
            register.command("gone", "from a removed module", "no_such_module_here:configure", "x:run")

    registry = registry_with(plugin_manager, Missing())
    assert main(["gone"], registry) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("specplug: error: cannot load 'no_such_module_here:configure'") and "\n" not in err
    assert main(["plugins", "--json"], registry) == 0  # the other commands are unaffected


def test_a_command_name_taken_twice_warns_and_the_first_stays(plugin_manager):
    class Again:
        @hookimpl
        def register_commands(self, register):
            register.command("make-draft", "mine", lambda parser: None, lambda args: 0)

    with pytest.warns(UserWarning, match="command 'make-draft' from plugin '.*' ignored: plugin "
                                         "'specplug.proposers.draft_model' added it first"):
        registry = registry_with(plugin_manager, Again())
    assert registry.commands[(None, "make-draft")].run == "specplug.distill:run_command"


@pytest.mark.parametrize("module", ["specplug.cli", "specplug.bench", "specplug.tune", "specplug.distill"])
def test_the_faces_name_no_proposer(module):
    """The CLI, bench, tuner and make-draft name proposers only through their plugins' NAME."""
    import importlib
    from pathlib import Path

    from specplug.plugins import load_registry, make_plugin_manager

    source = Path(importlib.import_module(module).__file__).read_text()
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    for name in load_registry(make_plugin_manager(load_entrypoints=False)).names("proposer"):
        assert f'"{name}"' not in code and f"'{name}'" not in code, (module, name)


def test_a_plugin_for_an_older_interface_that_this_one_contains_still_loads(plugin_manager):
    class Older:
        specplug_api_version = 1  # later versions only added to what a proposer plugin uses

        @hookimpl
        def register_proposers(self, register):
            register.proposer("older", lambda context: Fixed(1))

    plugin_manager.register(Older(), name="older-plugin")
    assert "older" in load_registry(plugin_manager).names("proposer")
