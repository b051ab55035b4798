"""``specplug make-draft``: layer choice, the layer-subset draft, distillation, resuming, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from specplug import distill
from specplug.cli import main
from specplug.config import load_config
from specplug.errors import SpecplugError

pytestmark = pytest.mark.slow

PROMPTS = [[{"role": "user", "content": "Name three colours."}], "The history of Rome began"]


@pytest.mark.parametrize("total", [1, 2, 5, 30, 32])
def test_select_layers_spreads_evenly_with_first_and_last(total):
    for count in range(1, total + 1):
        layers = distill.select_layers(total, count)
        assert len(layers) == count and layers[0] == 0
        assert all(b > a for a, b in zip(layers, layers[1:])) and layers[-1] <= total - 1
        if count > 1:
            assert layers[-1] == total - 1
            gaps = {b - a for a, b in zip(layers, layers[1:])}
            assert max(gaps) - min(gaps) <= 1
    assert distill.select_layers(total, total) == list(range(total))
    assert distill.select_layers(30, 6) == [0, 6, 12, 17, 23, 29]
    for bad in (0, total + 1):
        with pytest.raises(SpecplugError, match=f"from 1 to {total}"):
            distill.select_layers(total, bad)


def test_draft_with_every_layer_reproduces_the_target(hf_model):
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 2]])
    draft = distill.build_draft(hf_model, list(range(hf_model.config.num_hidden_layers)))
    with torch.no_grad():
        assert torch.equal(draft(ids).logits, hf_model(ids).logits)


def test_draft_with_a_subset_copies_those_layers(hf_model):
    layers = [0, 10, 29]
    draft = distill.build_draft(hf_model, layers)
    assert draft.config.num_hidden_layers == 3 and len(draft.model.layers) == 3
    assert hf_model.config.num_hidden_layers == 30  # the target's config is untouched
    for i, source in enumerate(layers):
        for name, tensor in draft.model.layers[i].state_dict().items():
            assert torch.equal(tensor, hf_model.model.layers[source].state_dict()[name]), (i, name)
    assert torch.equal(draft.model.norm.weight, hf_model.model.norm.weight)
    assert torch.equal(draft.model.embed_tokens.weight, hf_model.model.embed_tokens.weight)
    assert draft.lm_head.weight is draft.model.embed_tokens.weight  # still tied
    assert draft.model.norm.weight.data_ptr() != hf_model.model.norm.weight.data_ptr()  # copied, not shared


def test_distillation_lowers_kl_writes_a_loadable_draft_and_resumes(tmp_path, hf_model):
    from specplug.models.loader import load_hf_model

    config = load_config(None, ["proposer.name=none"])
    out = tmp_path / "draft"
    first = distill.make_draft(config, out, num_layers=4, steps=3, gen_tokens=24, prompts=PROMPTS,
                               keep_checkpoint=True, hf_target=hf_model)
    assert first["distill_steps"] == 3 and first["resumed_from_step"] is None
    state = torch.load(out / distill.CHECKPOINT_NAME, weights_only=False)
    assert state["step"] == 3 and state["key"]["layers"] == first["layers"] == [0, 10, 19, 29]
    sequences = state["sequences"]
    assert len(sequences) == 2 and all(len(s) > 24 for s in sequences)

    info = distill.make_draft(config, out, num_layers=4, steps=6, gen_tokens=24, prompts=PROMPTS,
                              hf_target=hf_model)
    assert info["resumed_from_step"] == 3 and info["distill_steps"] == 6
    assert info["initial_loss"] == first["initial_loss"]
    assert not (out / distill.CHECKPOINT_NAME).exists()
    assert json.loads((out / distill.METADATA_NAME).read_text()) == info

    loaded = load_hf_model(out, torch.float32)
    assert loaded.config.num_hidden_layers == 4
    before = distill.evaluate(distill.build_draft(hf_model, info["layers"]), hf_model, sequences)
    after = distill.evaluate(loaded, hf_model, sequences)
    print(f"KL on the training batch: {before['kl']:.3f} before, {after['kl']:.3f} after 6 steps")
    assert after["kl"] < 0.8 * before["kl"]
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--num-layers", "0"], "--num-layers must be from 1 to 30"),
    (["--num-layers", "31"], "--num-layers must be from 1 to 30"),
    (["--layers", "0,30"], "layer index 30 out of range: the target has layers 0 to 29"),
    (["--layers", "4,2"], "strictly increasing"),
    (["--layers", "0,x"], "comma-separated layer indices"),
    (["--layers", "0,4", "--num-layers", "2"], "either --num-layers or --layers, not both"),
])
def test_bad_layer_choices_give_one_clear_line(args, message, tmp_path, capsys):
    assert main(["make-draft", "--config", "configs/draft_model.yaml", "--out", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_out_defaults_to_a_draft_model_configs_path(capsys):
    assert main(["make-draft", "--config", "configs/ngram.yaml"]) == 2
    assert "--out is needed" in capsys.readouterr().err
