"""`specplug tune layerskip`: a short real study writes a usable config and resumes."""

from __future__ import annotations

import optuna
import pytest

from specplug.config import load_config
from specplug.errors import SpecplugError
from specplug.tune import default_study_path, sparse_masks, starting_mask, tune_layerskip

pytestmark = pytest.mark.slow
PROMPTS = ["The three primary colours are", "def fibonacci(n):"]


@pytest.fixture(autouse=True)
def studies_in_tmp_path(tmp_path, monkeypatch):
    """Studies live in the user's cache keyed by the tuned config's path, and pytest reuses its tmp paths
    across runs: a study left by an earlier run would be resumed. Each test gets its own cache."""
    monkeypatch.setattr("specplug.tune.cache_dir", lambda: tmp_path / "cache")


def test_sparse_masks_skip_little_and_never_the_first_or_last_layer():
    masks = sparse_masks(20, 30, seed=0)
    assert all(any(m.values()) for m in masks)
    assert {int(k.split("_")[1]) for m in masks for k in m} == set(range(1, 29))
    skipped = sum(sum(m.values()) for m in masks) / sum(len(m) for m in masks)
    assert skipped < 0.2


def test_starting_mask_reads_the_given_layerskip_config():
    config = load_config(None, ["proposer.name=layerskip", "proposer.skip_layers=[3]", "proposer.skip_mlp=[7]"])
    mask = starting_mask(config, 30)
    assert sorted(k for k, v in mask.items() if v) == ["attn_3", "mlp_3", "mlp_7"]
    assert starting_mask(load_config(None, ["proposer.name=ngram"]), 30) is None


def test_tune_writes_a_config_that_runs_and_resumes(tmp_path):
    out = tmp_path / "tuned.yaml"
    config = load_config(None, ["proposer.name=none", "max_model_len=256"])
    result = tune_layerskip(config, PROMPTS, 3, out, max_new_tokens=8, progress=False)
    tuned = load_config(out)
    assert tuned.proposer.name == "layerskip"
    assert tuned.proposer.options == {"skip_attention": result["skip_attention"], "skip_mlp": result["skip_mlp"]}
    assert 0 not in result["skip_attention"] + result["skip_mlp"]
    assert 29 not in result["skip_attention"] + result["skip_mlp"]
    assert result["tokens_per_second"] > 0 and result["plain_tokens_per_second"] > 0
    assert "Measured in one run: layerskip" in out.read_text()
    study = optuna.load_study(study_name="layerskip", storage=f"sqlite:///{default_study_path(out)}")
    assert len(study.trials) == 3
    tune_layerskip(config, PROMPTS, 4, out, max_new_tokens=8, progress=False)
    assert len(optuna.load_study(study_name="layerskip", storage=f"sqlite:///{default_study_path(out)}")
               .trials) == 4  # resumed: one more trial, not four


def test_the_given_skip_set_is_the_first_trial_so_the_result_is_never_slower(tmp_path):
    out = tmp_path / "tuned.yaml"
    given = load_config(None, ["proposer.name=layerskip", "proposer.skip_attention=[5,9]", "proposer.skip_mlp=[9]",
                               "max_model_len=256"])
    result = tune_layerskip(given, PROMPTS, 2, out, max_new_tokens=8, progress=False)
    study = optuna.load_study(study_name="layerskip", storage=f"sqlite:///{default_study_path(out)}")
    first = study.trials[0]
    assert sorted(k for k, v in first.params.items() if v) == ["attn_5", "attn_9", "mlp_9"]
    best = {k for k, v in study.best_trial.params.items() if v}  # the fastest measured, the given one included
    written = {f"attn_{i}" for i in result["skip_attention"]} | {f"mlp_{i}" for i in result["skip_mlp"]}
    assert written == best


def test_every_set_pruned_is_a_clear_error(tmp_path):
    config = load_config(None, ["proposer.name=none", "max_model_len=256"])
    with pytest.raises(SpecplugError, match="every skip set was pruned"):
        tune_layerskip(config, PROMPTS, 2, tmp_path / "t.yaml", max_skip_ratio=0.001, max_new_tokens=4,
                       progress=False)
