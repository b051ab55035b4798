"""The eagle3 proposer on the tiny model: the target's features, their hand-over through the engine, the
head's cache staying aligned through rollbacks, lossless greedy and sampled output (the conformance kit runs
eagle3 in test_conformance.py, the shipped head on the real model too), checkpoints in vLLM's
layout, training, and one-line errors."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from specplug.config import load_config
from specplug.eagle3_data import FeatureRecorder, Sample
from specplug.eagle3_train import acceptance, draft_vocabulary, labels, train
from specplug.engine.engine import Engine, Request
from specplug.errors import ConfigError
from specplug.metadata import Draft, DraftRequest
from specplug.models.eagle3 import Eagle3Head
from specplug.models.llama import CompactLlama
from specplug.proposers.eagle3 import Eagle3Options, make_eagle3
from specplug.proposers.eagle3_drafter import Eagle3Drafter
from specplug.proposers.none import NoProposer
from specplug.testing.checks import (K, MAX_LEN, TINY_HEAD_LAYERS, VOCAB, check_sampling_follows_the_target,
                                     context_for, tiny_model)
from specplug.testing.checks import tiny_eagle3_head as tiny_head
from specplug.verifiers.rejection import RejectionSampler

LAYERS = TINY_HEAD_LAYERS


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


@pytest.fixture(scope="module")
def head_dir(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("head")
    tiny_head(model).save(directory, dtype=torch.float64)
    return directory


def features_of(model: CompactLlama, tokens: list[int], layers=LAYERS) -> torch.Tensor:
    """[len(tokens), F] the target's features at every position of ``tokens``, from an empty cache."""
    cache = model.new_cache(1, len(tokens) + 1)
    positions = torch.arange(len(tokens))[None]
    _, features = model.forward_features(torch.tensor([tokens]), positions, cache, slice(0, 1), layers)
    return torch.cat([features[layer][0] for layer in layers], -1)


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(4)] * 3 for _ in range(count)]


def run(engine: Engine, requests: list[Request]) -> dict:
    out: dict = {}
    for step in engine.run(requests):
        out.setdefault(step.request_id, []).extend(step.new_token_ids)
    assert not engine.faults.take()
    return out


def test_features_are_the_residual_stream_entering_each_layer():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    hf = LlamaForCausalLM(config).eval().double()
    model = CompactLlama.from_hf(hf, torch.float64, torch.device("cpu"))
    tokens = prompts(1)[0]
    with torch.no_grad():
        reference = hf(torch.tensor([tokens]), output_hidden_states=True).hidden_states
    ours = features_of(model, tokens).split(64, -1)
    torch.testing.assert_close(ours[0], reference[0][0])  # layer 0's input: the embeddings
    torch.testing.assert_close(ours[1], reference[1][0])  # layer 1's input: layer 0's output
    # HF returns the last one normed (its RMSNorm computes in float32)
    torch.testing.assert_close(model.rms_norm(ours[2], model.norm), reference[2][0], atol=1e-6, rtol=1e-6)


class OracleDrafter(Eagle3Drafter):
    """Drafts the true greedy continuation with probability 0.6 (else a wrong token), so that drafts are
    accepted and rejected at every length; snapshots the head's real cache entries at each step."""

    def __init__(self, *args, truth: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.truth, self.rng, self.snapshots = truth, random.Random(1), []

    def propose(self, requests):
        for request in requests:
            row = self.by_id.get(request.seq_id)
            if row is not None and row.fed:
                self.snapshots.append((request.seq_id, row.fed, self.cache.layer(0)[0][row.slot, :, : row.fed].clone()))
        return super().propose(requests)

    def _pick(self, request, row, drafted, logits):  # noqa: ARG002 - the head's logits are ignored
        position = len(request.token_ids) + len(drafted) - request.num_prompt_tokens
        true = self.truth[request.seq_id][position]
        token = true if self.rng.random() < 0.6 else (true + 1) % VOCAB
        return token, None, 1.0


def test_the_head_cache_stays_aligned_with_the_target_through_rollbacks(model):
    requests = [Request(i, p, 30) for i, p in enumerate(prompts(7))]
    plain = run(Engine(model, None, NoProposer(), RejectionSampler(), K, 3, MAX_LEN), requests)
    head = tiny_head(model)
    drafter = OracleDrafter("eagle3", head, model.embed, 3, MAX_LEN, K, truth=plain)
    engine = Engine(model, None, drafter, RejectionSampler(), K, 3, MAX_LEN)
    spec = run(engine, requests)
    assert spec == plain and len(drafter.snapshots) > 20
    for seq_id, fed, keys in drafter.snapshots:
        tokens = requests[seq_id].prompt_token_ids + plain[seq_id]
        hidden = head.project_features(features_of(model, tokens)[:fed])
        embeds = torch.nn.functional.embedding(torch.tensor([tokens[1: fed + 1]]), model.embed)
        _, reference, _ = head.qkv(embeds, hidden[None], torch.arange(fed)[None])
        torch.testing.assert_close(keys, reference[0])


def test_oracle_drafts_are_accepted_and_rejected(model):
    requests = [Request(i, p, 30) for i, p in enumerate(prompts(4))]
    plain = run(Engine(model, None, NoProposer(), RejectionSampler(), K, 4, MAX_LEN), requests)
    drafter = OracleDrafter("eagle3", tiny_head(model), model.embed, 4, MAX_LEN, K, truth=plain)
    engine = Engine(model, None, drafter, RejectionSampler(), K, 4, MAX_LEN)
    drafted = accepted = 0
    for step in engine.run(requests):
        drafted, accepted = drafted + step.num_draft, accepted + step.num_accepted
    assert 0 < accepted < drafted


@pytest.mark.parametrize("rows", [1, 4])
def test_greedy_output_equals_plain_decoding(model, head_dir, rows):
    requests = [Request(i, p, 24) for i, p in enumerate(prompts(6))]
    plain = run(Engine(model, None, NoProposer(), RejectionSampler(), K, rows, MAX_LEN), requests)
    drafter = make_eagle3(context_for(model, rows), Eagle3Options(head=str(head_dir)))
    engine = Engine(model, None, drafter, RejectionSampler(), K, rows, MAX_LEN)
    drafted = 0
    out: dict = {}
    for step in engine.run(requests):
        out.setdefault(step.request_id, []).extend(step.new_token_ids)
        drafted += step.num_draft
    assert out == plain and drafted > 0


def test_sampled_tokens_follow_the_target(model, head_dir):
    factory = lambda context: make_eagle3(context, Eagle3Options(head=str(head_dir)))  # noqa: E731
    check_sampling_follows_the_target(factory, model, seed=3, rows=200, batches=5)


def test_a_checkpoint_is_in_vllms_eagle3_layout_and_loads_back(model, tmp_path):
    from safetensors.torch import load_file

    head = tiny_head(model, seed=5)
    head.save(tmp_path, dtype=torch.float32, training={"tokens": 1})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["draft_vocab_size"] == 64
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == list(LAYERS)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert {"fc.weight", "midlayer.self_attn.q_proj.weight", "midlayer.hidden_norm.weight", "lm_head.weight",
            "d2t", "t2d"} <= set(tensors)
    assert tensors["midlayer.self_attn.q_proj.weight"].shape == (head.shape.q_heads * head.shape.head_dim, 128)
    assert torch.equal(tensors["t2d"].nonzero()[:, 0], head.target_ids)  # t2d marks exactly the draft tokens
    loaded = Eagle3Head.load(tmp_path, torch.float64, torch.device("cpu"))
    for name in Eagle3Head.MATRICES:
        torch.testing.assert_close(getattr(loaded, name), getattr(head, name).float().double())


def test_errors_name_the_problem_and_the_fix(model, tmp_path, head_dir):
    with pytest.raises(ConfigError, match="make-eagle3"):
        make_eagle3(context_for(model), Eagle3Options(head=str(tmp_path / "missing")))
    other = tiny_model(1)
    other.shape = type(other.shape)(**{**vars(other.shape), "hidden": 32})
    with pytest.raises(ConfigError, match="train a head for it"):
        make_eagle3(context_for(other), Eagle3Options(head=str(head_dir)))
    with pytest.raises(ConfigError, match="vLLM"):
        make_eagle3(context_for(None), Eagle3Options(head=str(head_dir)))


def test_training_lowers_the_loss_and_labels_only_answer_tokens(model, tmp_path):
    recorder = FeatureRecorder(LAYERS)
    engine = Engine(model, None, recorder, RejectionSampler(), 1, 8, MAX_LEN)
    requests = [Request(i, p, 24) for i, p in enumerate(prompts(16, seed=2))]
    samples = {}
    for step in engine.run(requests):
        if step.finish_reason:
            samples[step.request_id] = Sample(list(step.row.token_ids), 12, recorder.take(step.row.seq_id))
    samples = [samples[i] for i in range(16)]
    first = samples[0]
    torch.testing.assert_close(first.features, features_of(model, first.token_ids)[:-1].to(first.features.dtype))
    head = tiny_head(model, draft_vocab=VOCAB)
    target = labels(head, [first], 2, len(first.token_ids))
    assert (target[0, 0, : 12 - 2] == -2).all() and (target[0, 0, 12 - 2: len(first.token_ids) - 2] >= 0).all()
    assert (target[0, 0, len(first.token_ids) - 2:] == -2).all()  # nothing to predict past the end
    head = Eagle3Head(head.shape, draft_vocabulary(samples, VOCAB, VOCAB)).double()
    before = acceptance(head, model.embed, samples, 2)
    result = train(head, model.embed, samples, 40, 2, tmp_path / "ck.pt", tokens_per_batch=512, learning_rate=1e-2)
    assert result["final_loss"] < 1.8 * 4.56 / 2  # half of uniform guessing over 96 tokens (ln 96 a step)
    assert acceptance(head, model.embed, samples, 2)[0] > before[0] + 0.2  # (on the samples it learnt)


def test_a_row_whose_features_have_a_gap_gets_no_drafts(model):
    """A strategy swapped in mid-request never saw the row's earlier features: drafting for it stays off."""
    drafter = Eagle3Drafter("eagle3", tiny_head(model), model.embed, 2, MAX_LEN, K)
    tokens = prompts(1)[0]
    features = features_of(model, tokens)
    drafter.on_target_features("late", 5, features[5:-1])
    drafter.on_target_features("whole", 0, features[:-1])
    requests = [DraftRequest(seq_id, tokens, 4, K) for seq_id in ("late", "whole")]
    late, whole = drafter.propose(requests)
    assert late.token_ids == [] and len(whole.token_ids) == K
    drafter.release("late")
    drafter.release("whole")
    assert drafter.rows == [] and drafter.cache.lengths == [0, 0]


class LogitsKept(Eagle3Drafter):
    """Keeps the draft logits each pick was made from, per row and draft step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: dict = {}

    def _pick(self, request, row, drafted, logits):
        self.seen.setdefault(request.seq_id, []).append(logits.clone())
        return super()._pick(request, row, drafted, logits)


def reference_logits(head: Eagle3Head, model: CompactLlama, tokens: list[int], drafted: list[int]) -> torch.Tensor:
    """The head's draft logits [draft_vocab] after one row fed ``tokens`` whole, then chained over ``drafted``
    (each chained entry: the last entry's hidden output and a drafted token), every entry through the whole
    head (as training computes it)."""
    hidden = head.project_features(features_of(model, tokens)[:-1])[None]
    ids = list(tokens[1:])
    for extra in range(len(drafted) + 1):
        embeds = torch.nn.functional.embedding(torch.tensor([ids]), model.embed)
        q, k, v = head.qkv(embeds, hidden, torch.arange(len(ids))[None])
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        logits, out = head.finish(attended, hidden)
        if extra < len(drafted):
            hidden, ids = torch.cat([hidden, out[:, -1:]], 1), ids + [drafted[extra]]
    return logits[0, -1]


def test_a_catch_up_drafts_what_the_whole_head_computes_at_each_row_s_last_entry(model):
    """A catch-up takes every fed entry's keys and values but runs only each row's last entry on through
    attention, the MLP and the LM head: its draft logits, and those of the chained step after it, are
    those of the whole head over every entry, for rows of different lengths in one call."""
    head = tiny_head(model)
    drafter = LogitsKept("eagle3", head, model.embed, 3, MAX_LEN, K)
    rows = {"short": prompts(1, seed=1)[0][:5], "long": prompts(1, seed=2)[0] * 2}
    for seq_id, tokens in rows.items():
        drafter.on_target_features(seq_id, 0, features_of(model, tokens)[:-1])
    drafts = drafter.propose([DraftRequest(seq_id, tokens, 2, 2) for seq_id, tokens in rows.items()])
    for (seq_id, tokens), draft in zip(rows.items(), drafts):
        first, second = drafter.seen[seq_id]
        torch.testing.assert_close(first, reference_logits(head, model, tokens, []))
        torch.testing.assert_close(second, reference_logits(head, model, tokens, draft.token_ids[:1]))
        assert draft.token_ids[0] == int(head.target_ids[first.argmax()])


def test_vllm_flags_name_vllms_own_eagle3_method_for_an_eagle3_config(head_dir, tmp_path, capsys):
    from specplug_vllm.flags import main, speculative_config

    eagle = tmp_path / "eagle3.yaml"
    eagle.write_text(yaml.safe_dump({"proposer": {"name": "eagle3", "head": str(head_dir)}, "num_speculative_tokens": 3}))
    assert speculative_config(load_config(eagle)) == {"method": "eagle3", "model": str(head_dir),
                                                      "num_speculative_tokens": 3}
    ngram = tmp_path / "ngram.yaml"
    ngram.write_text(yaml.safe_dump({"proposer": {"name": "ngram"}, "num_speculative_tokens": 2}))
    assert main(["--config", str(ngram)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"SPECPLUG_CONFIG={ngram} vllm serve MODEL --speculative-config")
    assert '"method": "custom_class"' in printed and '"num_speculative_tokens": 2' in printed


# ---- the head that ships for the default model (the conformance kit runs it on the real model) -------
def test_a_host_that_cannot_hand_out_features_refuses_eagle3_in_one_line(tmp_path):
    from specplug.hosting.building import EngineShape, StrategyBuilder
    from specplug.models.loader import resolve_model
    from specplug.plugins import load_registry

    model_dir = str(resolve_model("smollm2-135m"))
    builder = StrategyBuilder(EngineShape(3, 49152, 4, 512, model_dir, model_dir, "cpu"), load_registry())
    path = tmp_path / "eagle3.yaml"
    path.write_text(yaml.safe_dump({"proposer": {"name": "eagle3"}, "num_speculative_tokens": 3}))
    with pytest.raises(ConfigError, match="does not hand out: serve its head with the engine's own EAGLE-3 method"):
        builder.table(load_config(path))


def test_a_proposer_that_does_not_derive_from_proposer_still_runs(model):
    """A proposer written to the protocol without the base class has no ``feature_layers``: the feature
    hand-over asks nothing more of it."""
    class Duck:
        def propose(self, requests):
            return [Draft([1]) for _ in requests]

        def on_verified(self, outcomes):
            pass

        def release(self, seq_id):
            pass

    requests = [Request(i, p, 12) for i, p in enumerate(prompts(3))]
    plain = run(Engine(model, None, NoProposer(), RejectionSampler(), K, 3, MAX_LEN), requests)
    assert run(Engine(model, None, Duck(), RejectionSampler(), K, 3, MAX_LEN), requests) == plain


@pytest.mark.parametrize("formulation", ["halves", "w_x", "onednn"])
def test_the_head_computes_the_same_with_the_target_s_measured_kernels(model, formulation):
    """In inference the head's products run as the target's plan runs its LM head (use_kernels), packed
    copies included; what it computes stays that of x @ W.T."""
    from specplug.models.kernels import ROW_BUCKETS, KernelPlan

    head = tiny_head(model).float()
    names = (formulation,) * len(ROW_BUCKETS)
    plan = KernelPlan("rows", ("linear",) * len(ROW_BUCKETS), names, "measured", 1.0)
    embeds, hidden = torch.randn(2, 3, model.shape.hidden), torch.randn(2, 3, model.shape.hidden)
    positions = torch.arange(3).expand(2, -1)
    before = head.qkv(embeds, hidden, positions)
    attended = torch.randn_like(before[0])
    logits_before, out_before = head.finish(attended, hidden)
    head.use_kernels(plan)
    assert head.kernels is not None and bool(head.packed) == (formulation == "onednn")
    for a, b in zip(head.qkv(embeds, hidden, positions), before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    logits, out = head.finish(attended, hidden)
    torch.testing.assert_close(logits, logits_before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, out_before, rtol=1e-5, atol=1e-5)


class DigitTokenizer:
    """Raw-text prompts of space-separated token ids (what ``encode_prompt`` asks of a tokenizer)."""

    def __call__(self, text: str) -> dict:
        return {"input_ids": [int(t) for t in text.split()]}


def test_data_shards_come_out_in_prompt_order_resume_and_stop_at_the_budget(model, tmp_path):
    from specplug.eagle3_data import SHARD_PROMPTS, generate

    texts = [" ".join(map(str, p)) for p in prompts(2 * SHARD_PROMPTS + 5, seed=4)]
    shards = tmp_path / "shards"
    samples = generate(model, DigitTokenizer(), (), texts, LAYERS, 5, 10 ** 9, shards, rows=8)
    assert [s.token_ids[:12] for s in samples] == [p for p in prompts(len(texts), seed=4)]
    alone = run(Engine(model, None, NoProposer(), RejectionSampler(), 1, 1, MAX_LEN),
                [Request(i, p, 5) for i, p in enumerate(prompts(len(texts), seed=4)) if i % 40 == 0])
    assert all(samples[i].token_ids[12:] == tokens for i, tokens in alone.items())
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000.pt", "shard-00001.pt", "shard-00002.pt"]
    (shards / "shard-00002.pt").unlink()
    again = generate(model, DigitTokenizer(), (), texts, LAYERS, 5, 10 ** 9, shards, rows=8)
    assert [s.token_ids for s in again] == [s.token_ids for s in samples]
    assert [s.token_ids for s in generate(None, DigitTokenizer(), (), texts, LAYERS, 5, 10 ** 9, shards)] == \
        [s.token_ids for s in samples]  # all read back: no model needed
    budget = generate(model, DigitTokenizer(), (), texts, LAYERS, 5, 1, tmp_path / "small", rows=8)
    assert len(budget) == SHARD_PROMPTS and len(list((tmp_path / "small").iterdir())) == 1
