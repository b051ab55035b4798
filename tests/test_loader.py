"""Model sources: alias, .gguf file, HF directory; and the errors for the rest."""

from __future__ import annotations

import pytest
import torch

from specplug.models.loader import alias_gguf, load_hf_model, parse_device, parse_dtype, resolve_model
from specplug.models.llama import CompactLlama, check_supported
from specplug.errors import SpecplugError


def test_hf_directory_resolves_to_itself(llm):
    assert resolve_model(str(llm.model_dir)) == llm.model_dir


@pytest.mark.slow
def test_a_gguf_file_is_converted_once_into_the_cache(llm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPECPLUG_CACHE_DIR", str(tmp_path))
    gguf = alias_gguf("smollm2-135m")
    converted = resolve_model(str(gguf))
    assert converted.parent == tmp_path / "models" and (converted / "config.json").is_file()
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().err
    assert resolve_model(str(gguf)) == converted  # second time: from the cache, no conversion
    assert "converting" not in capsys.readouterr().err
    reference = dict(load_hf_model(llm.model_dir, torch.float32).named_parameters())
    for name, weight in load_hf_model(converted, torch.float32).named_parameters():
        assert torch.equal(weight, reference[name]), name


@pytest.mark.parametrize("spec, message", [
    ("/no/such/model", "model '/no/such/model' not found: set `model` to a local HF directory, a .gguf file"),
])
def test_missing_model(spec, message):
    with pytest.raises(SpecplugError, match="not found") as info:
        resolve_model(spec)
    assert message in str(info.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(SpecplugError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_dtype_and_device_errors():
    assert parse_dtype("bf16") == torch.bfloat16
    with pytest.raises(SpecplugError, match="unknown dtype 'fp8'"):
        parse_dtype("fp8")
    with pytest.raises(SpecplugError, match="unknown device 'tpu'"):
        parse_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SpecplugError, match="sees no CUDA GPU; use device: cpu"):
            parse_device("cuda")


def test_unsupported_architecture_is_refused_clearly(llm):
    config = load_hf_model(llm.model_dir, torch.float32).config
    config.model_type, config.attention_bias = "gpt2", True
    with pytest.raises(SpecplugError, match="model type 'gpt2', bias in attention or MLP"):
        check_supported(config)


def test_compact_forward_matches_hf_logits(llm, hf_model):
    """The fused, pair-permuted forward reproduces HF's logits (fp32 rounding only)."""
    ids = torch.tensor([llm.encode("The quick brown fox jumps over the lazy dog.")])
    with torch.inference_mode():
        reference = hf_model(ids).logits[0]
        cache = llm.model.new_cache(1, 64)
        ours = llm.model(ids, torch.arange(ids.shape[1])[None], cache, slice(0, 1))[0]
    assert isinstance(llm.model, CompactLlama)
    assert (ours - reference).abs().max() < 1e-3
    assert torch.equal(ours.argmax(-1), reference.argmax(-1))
