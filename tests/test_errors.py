"""Broken inputs fail with one line that names the problem and the fix: model directories and .gguf files,
config and prompts files, devices, blocked plugins, sampling values."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from specplug import hookimpl
from specplug.cli import main
from specplug.config import MAX_SAMPLING_SEED, load_config
from specplug.errors import ConfigError, SpecplugError
from specplug.models.loader import parse_device, resolve_model
from specplug.plugins import load_registry, make_plugin_manager
from specplug.prompts import parse_prompt_line, read_prompts_file

MESSAGE = '{"role": "...", "content": "..."}'
EXAMPLE = '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}'


def run_cli(capsys, *argv: str) -> str:
    """The one stderr line of a CLI run that must fail with exit status 2."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("specplug: error: "), err
    return err[len("specplug: error: "):].rstrip("\n")


@pytest.fixture(autouse=True)
def no_config_from_env(monkeypatch):
    monkeypatch.delenv("SPECPLUG_CONFIG", raising=False)
    monkeypatch.delenv("SPECPLUG_BLOCK_PLUGINS", raising=False)


# --- model directories and .gguf files ---

@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    return resolve_model("smollm2-135m")


@pytest.fixture
def model_dir(tmp_path, real_model_dir) -> Path:
    """A copy of the real model's config and tokenizer, with an empty stand-in for the weights."""
    target = tmp_path / "model"
    target.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(real_model_dir / name, target / name)
    (target / "model.safetensors").touch()
    return target


def test_a_complete_model_directory_resolves_to_itself(model_dir):
    assert resolve_model(str(model_dir)) == model_dir


def test_missing_weights_are_named(model_dir, capsys):
    (model_dir / "model.safetensors").unlink()
    message = f"model directory '{model_dir}' has no weights (*.safetensors or pytorch_model*.bin): " \
              "copy the model's weight files into it"
    with pytest.raises(SpecplugError) as info:
        resolve_model(str(model_dir))
    assert str(info.value) == message
    assert run_cli(capsys, "generate", "--set", f"model={model_dir}", "--prompt", "hi") == message


def test_sharded_or_bin_weights_count(model_dir):
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model-00001-of-00002.bin").touch()
    assert resolve_model(str(model_dir)) == model_dir


def test_missing_tokenizer_is_named(model_dir):
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(SpecplugError, match=f"model directory '{model_dir}' has no tokenizer \\(tokenizer.json, "
                                            "tokenizer.model, vocab.json, vocab.txt\\): copy the model's tokenizer"):
        resolve_model(str(model_dir))


def test_config_json_that_is_not_json(model_dir):
    (model_dir / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(SpecplugError, match=f"model directory '{model_dir}': config.json is not readable JSON "
                                            "\\(.+\\); replace it with the model's original config.json"):
        resolve_model(str(model_dir))


@pytest.mark.parametrize("config", [[1, 2], {"architectures": ["LlamaForCausalLM"]}])
def test_config_json_without_model_type(model_dir, config):
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpecplugError, match='config.json has no "model_type"; replace it'):
        resolve_model(str(model_dir))


def test_unsupported_model_family_is_refused_before_loading(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(SpecplugError) as info:
        resolve_model(str(model_dir))
    assert str(info.value) == (f"model directory '{model_dir}' holds a 'gpt2' model; the embedded engine runs "
                               "Llama-family models (llama, mistral): use one of those, or the vLLM adapter")


def test_garbage_gguf_is_not_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECPLUG_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "random.gguf"
    gguf.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(SpecplugError) as info:
        resolve_model(str(gguf))
    assert str(info.value) == (f"not a readable GGUF file: '{gguf}' does not start with the GGUF magic bytes; "
                               "re-download it, or point `model` at an HF model directory")


def test_damaged_gguf_is_not_readable_and_leaves_no_cache_entry(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPECPLUG_CACHE_DIR", str(cache))
    gguf = tmp_path / "truncated.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(64)))
    with pytest.raises(SpecplugError, match=f"^not a readable GGUF file: '{gguf}' \\(.+\\); re-download it"):
        resolve_model(str(gguf))
    assert not any((cache / "models").iterdir())


def test_a_regular_file_is_not_a_model(tmp_path, model_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    with pytest.raises(SpecplugError, match=f"^model '{notes}' is a file, not a model directory or .gguf file: "
                                            "point `model` at an HF model directory"):
        resolve_model(str(notes))
    with pytest.raises(SpecplugError, match=f"did you mean its directory '{model_dir}'"):
        resolve_model(str(model_dir / "config.json"))


def test_a_missing_path_keeps_its_message(tmp_path):
    with pytest.raises(SpecplugError, match=f"model '{tmp_path / 'nope'}' not found: set `model` to a local HF"):
        resolve_model(str(tmp_path / "nope"))


# --- config and prompts files ---

def test_a_directory_as_config_file(tmp_path, capsys):
    from specplug.config import packaged_configs

    message = (f"config file '{tmp_path}' is a directory, not a file: point --config (or SPECPLUG_CONFIG) at a "
               f"YAML or JSON file (ready-made ones ship with specplug: --config {' | '.join(packaged_configs())})")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == message
    assert run_cli(capsys, "generate", "--config", str(tmp_path), "--prompt", "hi") == message


def test_a_directory_as_prompts_file(tmp_path, capsys):
    message = (f"prompts file '{tmp_path}' is a directory, not a file: point --prompts-file at a JSONL file "
               "(one JSON object per line)")
    with pytest.raises(SpecplugError) as info:
        read_prompts_file(tmp_path)
    assert str(info.value) == message
    assert run_cli(capsys, "generate", "--prompts-file", str(tmp_path)) == message


def test_config_file_not_utf8_names_the_byte_offset(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("device: cpu\nmodel: café\n".encode("latin-1"))
    message = f"config file '{path}' is not UTF-8 (byte 0xe9 at offset 22): save the file as UTF-8"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == message
    assert run_cli(capsys, "generate", "--config", str(path), "--prompt", "hi") == message


def test_prompts_file_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes('{"prompt": "ok"}\n\n{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(SpecplugError) as info:
        read_prompts_file(path)
    assert str(info.value) == f"prompts file '{path}' is not UTF-8 at line 3 (byte 0xe9): save the file as UTF-8"


def test_prompts_file_lines_split_on_newlines_only(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('\ufeff{"prompt": "a\u2028b"}\r\n{"prompt": "c"}\n', encoding="utf-8")
    assert read_prompts_file(path) == ["a\u2028b", "c"]


@pytest.mark.parametrize("line, message", [
    ('["hi"]', f"expected a JSON object, got a list; each line must be one JSON object like {EXAMPLE}"),
    ('"hi"', "expected a JSON object, got a string"),
    ('{"text": "hi", "id": 3}', f'no "prompt" or "messages" key (keys found: "text", "id"); use {EXAMPLE}'),
    ("{}", 'no "prompt" or "messages" key (keys found: none)'),
    ('{"prompt": 3}', '"prompt" must be a string, got a number (3)'),
    ('{"prompt": null}', '"prompt" must be a string, got null'),
    ('{"messages": "hi"}', f'"messages" must be a non-empty list of {MESSAGE} objects, got a string'),
    ('{"messages": []}', f'"messages" must be a non-empty list of {MESSAGE} objects, got an empty list'),
    ('{"messages": [{"role": "user", "content": "a"}, "b"]}',
     f"messages[1] must be an object like {MESSAGE}, got a string"),
    ('{"messages": [{"content": "a"}]}', f'messages[0] has no "role"; each message is {MESSAGE}'),
    ('{"messages": [{"role": "user"}]}', f'messages[0] has no "content"; each message is {MESSAGE}'),
    ('{"messages": [{"role": "user", "content": ["a"]}]}', 'messages[0]["content"] must be a string, got a list'),
    ('{"prompt": "a\\ud800b"}', '"prompt" holds a lone UTF-16 surrogate (U+D800) at character 1: send valid Unicode'),
    ('{"messages": [{"role": "user", "content": "\\udc00"}]}', 'messages[0]["content"] holds a lone UTF-16 surrogate'),
])
def test_prompt_schema_errors_say_what_is_wrong(line, message):
    with pytest.raises(SpecplugError) as info:
        parse_prompt_line(line, "p.jsonl:4")
    text = str(info.value)
    assert text.startswith(f"p.jsonl:4: {message}"), text
    assert text.count("{") == text.count("}") and "\n" not in text


@pytest.mark.parametrize("seed", ['"7"', "-1", "1.5", "true", str(2**63)])
def test_a_prompt_lines_seed_must_be_an_integer_in_range(tmp_path, seed):
    from specplug.prompts import read_prompt_lines

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "seed": ' + seed + "}\n")
    with pytest.raises(SpecplugError, match=r'p.jsonl:2: seed must be an integer from 0 to 9223372036854775807 or null'):
        read_prompt_lines(path)
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "seed": 3}\n')
    assert [line.seed for line in read_prompt_lines(path)] == [None, 3]


def test_valid_prompt_lines_still_parse():
    assert parse_prompt_line('{"prompt": "hi"}', "w") == "hi"
    messages = [{"role": "user", "content": "hi"}]
    assert parse_prompt_line(json.dumps({"messages": messages}), "w") == messages


# --- devices ---

@pytest.mark.parametrize("device", ["cudafoo", "cuda:x", "cuda:", "gpu", "CPU"])
def test_a_malformed_device_lists_the_accepted_forms(device):
    message = (f"unknown device '{device}': not a recognised device string; use cpu, cuda, cuda:N "
               "(N = GPU index) or auto")
    with pytest.raises(SpecplugError) as info:
        parse_device(device)
    assert str(info.value) == message


def test_a_malformed_device_in_the_cli(capsys):
    assert run_cli(capsys, "generate", "--set", "device=cudafoo", "--prompt", "hi").startswith(
        "unknown device 'cudafoo': not a recognised device string")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_well_formed_cuda_device_without_cuda(device):
    with pytest.raises(SpecplugError, match=f"device '{device}' asked for, but this torch build sees no CUDA GPU"):
        parse_device(device)


def test_well_formed_devices_parse():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto").type in ("cpu", "cuda")


# --- blocked plugins ---

class EchoPlugin:
    @hookimpl
    def register_proposers(self, register):
        register.proposer("echo", lambda context: None)


class FakeEntryPoint:
    dist = None

    def __init__(self, name, plugin):
        self.name, self.plugin, self.loads = name, plugin, 0

    def load(self):
        self.loads += 1
        return self.plugin


@pytest.mark.parametrize("kind, name, plugin", [
    ("proposer", "ngram", "specplug.proposers.ngram"),
    ("verifier", "greedy", "specplug.verifiers.builtin"),
])
def test_a_blocked_builtin_is_reported_as_blocked(monkeypatch, kind, name, plugin):
    monkeypatch.setenv("SPECPLUG_BLOCK_PLUGINS", plugin)
    registry = load_registry(make_plugin_manager(load_entrypoints=False))
    with pytest.raises(ConfigError) as info:
        registry.get(kind, name)
    assert str(info.value) == (f"{kind} '{name}' is provided by plugin '{plugin}', which SPECPLUG_BLOCK_PLUGINS "
                               "blocks: remove it from that variable")
    with pytest.raises(ConfigError, match=f"unknown {kind} 'nosuch'; known {kind}s: .+ Install the package"):
        registry.get(kind, "nosuch")


def test_a_blocked_entry_point_plugin_is_loaded_only_to_explain(monkeypatch):
    entry_point = FakeEntryPoint("echo-plugin", EchoPlugin())
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [entry_point])
    monkeypatch.setenv("SPECPLUG_BLOCK_PLUGINS", "echo-plugin")
    registry = load_registry(make_plugin_manager(load_entrypoints=True))
    assert "echo" not in registry.names("proposer") and entry_point.loads == 0
    with pytest.raises(ConfigError, match="^proposer 'echo' is provided by plugin 'echo-plugin', which "
                                          "SPECPLUG_BLOCK_PLUGINS blocks: remove it from that variable$"):
        registry.check_choice("proposer", "echo", {})


def test_the_default_proposer_blocked_in_the_cli(monkeypatch, capsys):
    monkeypatch.setenv("SPECPLUG_BLOCK_PLUGINS", "specplug.proposers.ngram")
    monkeypatch.setenv("SPECPLUG_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert run_cli(capsys, "generate", "--prompt", "hi") == (
        "proposer 'ngram' is provided by plugin 'specplug.proposers.ngram', which SPECPLUG_BLOCK_PLUGINS blocks: "
        "remove it from that variable")


def test_block_names_that_match_no_plugin_warn_once(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [FakeEntryPoint("echo-plugin", EchoPlugin())])
    monkeypatch.setenv("SPECPLUG_BLOCK_PLUGINS", "specplug.proposers.ngarm, nothing,specplug.proposers.none")
    with pytest.warns(UserWarning) as caught:
        make_plugin_manager(load_entrypoints=False)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert text.startswith("SPECPLUG_BLOCK_PLUGINS names no known plugin: 'nothing', 'specplug.proposers.ngarm' "
                           "(did you mean 'specplug.proposers.ngram'?); known plugins: specplug.proposers.ngram, ")
    assert text.endswith(", specplug.verifiers.builtin, echo-plugin") and "\n" not in text


def test_block_names_that_match_plugins_do_not_warn(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [FakeEntryPoint("echo-plugin", None)])
    monkeypatch.setenv("SPECPLUG_BLOCK_PLUGINS", "specplug.proposers.none,echo-plugin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_plugin_manager(load_entrypoints=False)


# --- sampling values ---

@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_temperature_must_be_finite(tmp_path, value):
    path = tmp_path / "config.yaml"
    path.write_text(f"sampling:\n  temperature: {value}\n")
    with pytest.raises(ConfigError, match="^sampling.temperature must be a finite number >= 0 "
                                          "\\(got -?(inf|nan)\\); 0 means greedy$"):
        load_config(path)
    with pytest.raises(ConfigError, match="sampling.temperature must be a finite number >= 0"):
        load_config(overrides=[f"sampling.temperature={value}"])


@pytest.mark.parametrize("value", [".inf", ".nan", "1e400", "true"])
def test_top_p_must_be_a_finite_number(value):
    with pytest.raises(ConfigError, match="^sampling.top_p must be a finite number in \\(0, 1\\] \\(got .+\\); 1 turns it off$"):
        load_config(overrides=[f"sampling.top_p={value}"])


def test_huge_integer_temperature_is_refused_not_overflowed():
    with pytest.raises(ConfigError, match="sampling.temperature must be a finite number >= 0"):
        load_config(overrides=[f"sampling.temperature={10**400}"])


def test_seed_beyond_the_generator_range_is_refused_at_config_time():
    assert load_config(overrides=[f"sampling.seed={MAX_SAMPLING_SEED}"]).seed == MAX_SAMPLING_SEED
    with pytest.raises(ConfigError, match=f"sampling.seed must be an integer from 0 to {MAX_SAMPLING_SEED} or null "
                                          f"\\(got {2**64}\\)"):
        load_config(overrides=[f"sampling.seed={2**64}"])


@pytest.mark.parametrize(("field", "value"), [("temperature", -1.0), ("top_k", -2),
                                              ("top_p", 0.0), ("top_p", 1.5), ("seed", 2**64), ("seed", -1)])
def test_the_config_and_the_server_refuse_sampling_values_by_one_set_of_rules(field, value):
    from specplug.server.protocol import ApiError, sampling

    with pytest.raises(ConfigError) as config_error:
        load_config(overrides=[f"sampling.{field}={value}"])
    with pytest.raises(ApiError) as request_error:
        sampling(load_config().sampling, **{"temperature": None, "top_p": None, "top_k": None, "seed": None,
                                            field: value})
    assert request_error.value.param == field
    assert str(config_error.value) == f"sampling.{request_error.value}"
