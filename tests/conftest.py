"""Shared fixtures: a fresh plugin manager per test; the real SmolLM2 model loaded once per session."""

from __future__ import annotations

import pytest
import torch

from specplug.bench import first_mismatch
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
def llm():
    """The real default model (SmolLM2-135M, fp32, CPU) in the embedded engine, up to 4 rows."""
    from specplug.llm import LLM

    torch.manual_seed(0)
    return LLM(load_config(overrides=["proposer.name=none"]), max_batch_size=4)


@pytest.fixture(scope="session")
def hf_model(llm):
    from specplug.engine.loader import load_hf_model

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
