"""Shared fixtures: a fresh plugin manager per test; the real SmolLM2 model loaded once per session."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specplug.models.ties import first_mismatch
from specplug.config import load_config
from specplug.plugins import make_plugin_manager


@pytest.fixture
def plugin_manager():
    """A new plugin manager (built-ins only): nothing global to undo afterwards."""
    pm = make_plugin_manager(load_entrypoints=False)
    yield pm
    for name, plugin in list(pm.list_name_plugin()):
        pm.unregister(plugin, name)


@pytest.fixture(scope="session")
def tiny_hf():
    """A tiny random-weights Llama (2 layers, GQA 4:2 heads, vocab 256): engine tests in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_hf):
    """The tiny Llama in the engine's layout, float64: batch shape cannot flip a greedy choice."""
    from specplug.models.llama import CompactLlama

    return CompactLlama.from_hf(tiny_hf, torch.float64, torch.device("cpu"))


def plain_llm(*overrides: str):
    """The real default model in the embedded engine, plain decoding, up to 4 rows; config ``overrides``."""
    from specplug.llm import LLM

    return LLM(load_config(overrides=["proposer.name=none", *overrides]), max_batch_size=4)


@pytest.fixture(scope="session")
def llm():
    """The real default model (SmolLM2-135M, fp32, CPU) in the embedded engine, up to 4 rows."""
    torch.manual_seed(0)
    return plain_llm()


@pytest.fixture(scope="session")
def hf_model(llm):
    from specplug.models.loader import load_hf_model

    return load_hf_model(llm.model_dir, torch.float32)


@pytest.fixture(scope="session")
def assert_same_greedy(hf_model):
    """Assert two greedy outputs are equal, allowing a divergence only at a genuine near tie."""

    def check(prompt_ids, reference, other, label=""):
        mismatch = first_mismatch(hf_model, list(prompt_ids), list(reference), list(other))
        if mismatch is None:
            return
        print(f"{label}: outputs part at generated position {mismatch['position']}, "
              f"top-2 logit gap {mismatch['gap']} ({mismatch['reason']})")
        assert mismatch["near_tie"], f"{label}: greedy outputs differ beyond a near tie: {mismatch}"

    return check


EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "specplug-phrases"


@pytest.fixture(scope="session")
def phrases_site(tmp_path_factory) -> Path:
    """A directory holding the installed example package (specplug-phrases 0.1.0)."""
    base = tmp_path_factory.mktemp("third-party")
    source = base / "src"  # build from a copy: pip's in-tree build leaves nothing in the repository
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = base / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target
