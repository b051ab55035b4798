from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import sys
import types

import pytest

from specplug.config import DEFAULTS, AdapterSections, ConfigFile, config_to_dict, load_config, validate
from specplug.errors import ConfigError
from specplug.options import option


def test_defaults_file_and_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_speculative_tokens: 6\nproposer: {name: ngram, max_n: 5}\nsampling: {top_k: 3}\n")
    config = load_config(path, ["sampling.temperature=0.7", "proposer.min_n=2"])
    assert config.num_speculative_tokens == 6
    assert config.proposer.name == "ngram" and config.proposer.options == {"max_n": 5, "min_n": 2}
    assert config.sampling.temperature == 0.7 and config.sampling.top_k == 3
    assert config.sampling.top_p == DEFAULTS["sampling"]["top_p"]
    assert config.model == DEFAULTS["model"]


def test_json_file_and_env_variable(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"proposer": {"name": "none"}, "max_new_tokens": 9}))
    monkeypatch.setenv("SPECPLUG_CONFIG", str(path))
    config = load_config()
    assert config.proposer.name == "none" and config.max_new_tokens == 9


def test_switching_proposer_drops_the_previous_ones_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("proposer: {name: ngram, max_n: 5}\n")
    assert load_config(path, ["proposer.name=none"]).proposer.options == {}
    assert load_config(path, ["proposer=none"]).proposer.name == "none"


@pytest.mark.parametrize("override, message", [
    ("num_speculative_tokens=0", "num_speculative_tokens must be an integer from 1 to 64"),
    ("num_speculative_tokens=65", "from 1 to 64"),
    ("num_speculative_tokens=2.5", "from 1 to 64"),
    ("num_speculative_token=3", "did you mean 'num_speculative_tokens'"),
    ("sampling.temprature=1", "did you mean 'temperature'"),
    ("sampling.temperature=-1", "sampling.temperature must be a finite number >= 0 (got -1); 0 means greedy"),
    ("sampling.top_p=0", "sampling.top_p must be a finite number in (0, 1] (got 0); 1 turns it off"),
    ("sampling.top_k=-2", "top_k must be an integer >= 0"),
    ("max_new_tokens=0", "max_new_tokens must be an integer >= 1"),
    ("proposer.name=", "'proposer' needs a name"),
    ("stop=3", "stop must be a list of strings (got 3); one string is taken as a list of one"),
])
def test_bad_values_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(None, ["proposer.name"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("proposer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
    assert {p.stem for p in configs} >= {"ngram", "none", "draft_model", "layerskip"}
    for path in configs:
        assert load_config(path).proposer.name == path.stem.split("-")[0]  # e.g. layerskip-tuned


def test_proposer_switch_keeps_options_given_beside_it_in_any_order():
    for overrides in (["proposer.max_n=7", "proposer.name=other"], ["proposer.name=other", "proposer.max_n=7"]):
        assert load_config(None, overrides).proposer == load_config(None, overrides[::-1]).proposer
        assert load_config(None, overrides).proposer.options == {"max_n": 7}


@pytest.mark.parametrize("overrides", [
    [],
    ["serve.strategies.big={proposer: ngram, num_speculative_tokens: 5}", "serve.default_strategy=big"],
    ["serve.max_num_speculative_tokens=8", "serve.default_strategy=auto", "serve.max_batch_size=3"],
])
def test_serve_section_round_trips_and_follows_the_top_level_proposer(tmp_path, overrides):
    import yaml

    from specplug.config import config_to_dict

    config = load_config("configs/ngram.yaml", overrides)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    assert load_config(path).serve == config.serve
    if config.serve.default_strategy == "auto":
        return  # auto needs a proposer: switching the top level to none is refused (another test)
    # what the section derives is not frozen into the file: another top-level proposer is followed
    switched = load_config(path, ["proposer=none"])
    assert "ngram" not in switched.serve.strategies or "big" in switched.serve.strategies
    assert switched.serve.default_strategy in switched.serve.strategies or switched.serve.default_strategy == "auto"


@pytest.mark.parametrize("override, message", [
    ("serve.default_strategy=ngarm", "serve.default_strategy 'ngarm' is not a configured strategy (did you mean"),
    ("serve.strategies.x={proposer: ngram, num_speculative_tokens: 0}", "serve.strategies.x.num_speculative_tokens"),
    ("serve.colour=1", "unknown config key 'serve.colour'"),
    ("serve.auto.explore=2", "serve.auto.explore must be a finite number in [0, 1) (got 2)"),
    ("serve.max_num_speculative_tokens=2", "serve.max_num_speculative_tokens (2) is below"),
    ("serve.strategies.auto={proposer: ngram}", "'auto' is reserved"),
    ("serve.sagemaker_stream=xml", "serve.sagemaker_stream must be one of jsonlines, sse"),
])
def test_serve_section_errors(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("configs/ngram.yaml", [override])
    assert message in str(error.value)


def test_the_api_key_is_checked_but_never_shown():
    config = load_config(overrides=["serve.api_key=sk-very-secret"])
    assert config.serve.api_key == "sk-very-secret"
    assert "sk-very-secret" not in repr(config) and "sk-very-secret" not in repr(config.serve)
    for bad in ("serve.api_key=[sk-very-secret]", 'serve.api_key="sk-very-secret\\t"', "serve.api_key=' '"):
        with pytest.raises(ConfigError) as info:
            load_config(overrides=[bad])
        assert "serve.api_key must be a " in str(info.value) and "its value is not shown" in str(info.value)
        assert "sk-very-secret" not in str(info.value)
    with pytest.raises(ConfigError, match="serve.max_request_bytes must be an integer >= 1024"):
        load_config(overrides=["serve.max_request_bytes=10"])


def test_an_adapters_section_is_the_adapters_own():
    """`trtllm:` belongs to the TensorRT-LLM adapter: the core finds it by its entry point and checks it
    with the adapter's schema, the same rules as every section; without the section, its defaults."""
    from specplug_trtllm.config import TrtllmOptions

    assert "trtllm" not in {f.name for f in dataclasses.fields(ConfigFile)}
    assert AdapterSections()["trtllm"] is TrtllmOptions
    assert load_config(overrides=["trtllm.max_concurrency=4"]).section("trtllm", TrtllmOptions).max_concurrency == 4
    assert load_config().section("trtllm", TrtllmOptions) == TrtllmOptions()
    with pytest.raises(ConfigError, match="unknown config key 'trtlm' \\(did you mean 'trtllm'\\?\\); known keys: "
                                          ".*serve, trtllm$"):
        load_config(overrides=["trtlm.max_concurrency=4"])


def test_a_third_party_engine_adds_its_section_by_entry_point(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class MyEngineOptions:
        queue_depth: int = option(4, "requests queued per replica", ge=1)

    module = types.ModuleType("my_engine_adapter")
    module.MyEngineOptions = MyEngineOptions
    monkeypatch.setitem(sys.modules, "my_engine_adapter", module)
    points = [importlib.metadata.EntryPoint("my_engine", "my_engine_adapter:MyEngineOptions", AdapterSections.GROUP),
              importlib.metadata.EntryPoint("gone", "not_installed_adapter:Options", AdapterSections.GROUP)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: points if group == AdapterSections.GROUP
                        else [])
    config = load_config(overrides=["my_engine.queue_depth=8"])
    assert config.sections == {"my_engine": MyEngineOptions(8)}
    assert validate(config_to_dict(config)).sections == config.sections  # written back and read again
    with pytest.raises(ConfigError, match=r"^my_engine.queue_depth must be an integer >= 1 \(got 0\)$"):
        load_config(overrides=["my_engine.queue_depth=0"])
    with pytest.raises(ConfigError, match="config section 'gone' belongs to not_installed_adapter:Options, which "
                                          "does not import .*: reinstall the package that provides it"):
        load_config(overrides=["gone.x=1"])


def test_the_configs_that_ship_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    from specplug.config import PACKAGED_CONFIGS, packaged_configs

    shipped = sorted(p.stem for p in (PACKAGED_CONFIGS.parents[1] / "configs").glob("*.yaml"))
    assert packaged_configs() == shipped and "ngram" in shipped  # specplug/configs is configs/
    by_path = load_config(str(PACKAGED_CONFIGS.parents[1] / "configs" / "ngram.yaml"))
    monkeypatch.chdir(tmp_path)
    for name in ("ngram", "ngram.yaml"):
        found = load_config(name)
        assert dataclasses.replace(found, source=by_path.source) == by_path
    (tmp_path / "ngram.yaml").write_text("num_speculative_tokens: 5\n")  # a file of that name wins
    assert load_config("ngram.yaml").num_speculative_tokens == 5
    with pytest.raises(ConfigError, match="config file 'ngarm' not found \\(ready-made ones ship with specplug: "
                                          "--config .*ngram"):
        load_config("ngarm")
