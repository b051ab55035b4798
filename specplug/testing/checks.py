"""The conformance kit's checks on a tiny random-weights Llama (vocabulary 96, float64: no tie is ever
near, so greedy equality is exact)."""

from __future__ import annotations

import gc
import random
import tracemalloc

import torch

from specplug.engine.engine import Engine, Request
from specplug.metadata import DraftRequest, ProposerContext, SamplingParams
from specplug.models.llama import CompactLlama
from specplug.proposers.base import Proposer, proposer_name
from specplug.proposers.none import NoProposer
from specplug.verifiers.rejection import RejectionSampler

VOCAB, K, ROWS, MAX_LEN = 96, 4, 4, 128
LEAK_BYTES = 256 * 1024  # growth allowed after warm-up, over LEAK_REQUESTS requests
LEAK_REQUESTS = 400


def tiny_model(seed: int = 0) -> CompactLlama:
    """A tiny random-weights Llama (2 layers, GQA 4:2, vocab 96), float64: no tie is ever near."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, tie_word_embeddings=True)
    return CompactLlama.from_hf(LlamaForCausalLM(config).eval(), torch.float64, torch.device("cpu"))


TINY_HEAD_LAYERS = (0, 1, 2)  # the tiny model's 2 layers: the inputs of both and the last layer's output


def tiny_eagle3_head(model: CompactLlama, seed: int = 0, draft_vocab: int = 64):
    """A random EAGLE-3 head for the tiny model, sharp enough that some of its drafts are accepted."""
    from specplug.models.eagle3 import Eagle3Head, HeadShape

    torch.manual_seed(seed)
    s = model.shape
    shape = HeadShape(s.hidden, s.q_heads, s.kv_heads, s.head_dim, 128, s.vocab_size, draft_vocab, TINY_HEAD_LAYERS,
                      s.norm_eps, 10000.0, 256)
    d2t = torch.tensor(sorted(random.Random(seed).sample(range(VOCAB), draft_vocab))) - torch.arange(draft_vocab)
    head = Eagle3Head(shape, d2t)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(10 if p.dim() == 2 else 1)
    return head.to(model.dtype)


def context_for(model: CompactLlama | None = None, rows: int = ROWS) -> ProposerContext:
    return ProposerContext(K, VOCAB, torch.device("cpu"), rows, MAX_LEN, None, model)


def returns_probs(factory, model, seed) -> bool:
    """Whether the proposer returns draft probabilities for sampled rows (then they must be right)."""
    proposer, rng = factory(context_for(model)), random.Random(seed)
    requests = _requests(rng, ["p", "q"], [K, K])
    requests = [DraftRequest(r.seq_id, r.token_ids, r.num_prompt_tokens, K, SamplingParams(1.0)) for r in requests]
    drafts = proposer.propose(requests)
    for seq_id in ("p", "q"):
        proposer.release(seq_id)
    return any(d.probs is not None for d in drafts)


def _requests(rng: random.Random, ids: list[int], budgets: list[int], length: int = 24) -> list[DraftRequest]:
    out = []
    for seq_id, budget in zip(ids, budgets):
        pattern = [rng.randrange(VOCAB) for _ in range(5)]
        tokens = (pattern * (length // 5 + 1))[:length]  # repetitive: model-free proposers find drafts
        out.append(DraftRequest(seq_id, tokens, 8, budget))
    return out


def _check_drafts(name: str, requests: list[DraftRequest], drafts: list) -> None:
    assert len(drafts) == len(requests), f"{name}: {len(drafts)} drafts for {len(requests)} rows"
    for request, draft in zip(requests, drafts):
        n = len(draft.token_ids)
        assert n <= request.max_draft_tokens, f"{name}: drafted {n} tokens for a budget of {request.max_draft_tokens}"
        assert all(isinstance(t, int) and 0 <= t < VOCAB for t in draft.token_ids), \
            f"{name}: drafted a token id outside the vocabulary 0..{VOCAB - 1}: {draft.token_ids}"
        if draft.probs is not None:
            probs = draft.probs.double()
            assert tuple(probs.shape) == (n, VOCAB), f"{name}: probs of shape {tuple(probs.shape)}, not ({n}, {VOCAB})"
            assert bool((probs >= 0).all()) and torch.allclose(probs.sum(-1), torch.ones(n, dtype=probs.dtype),
                                                                 atol=1e-4), f"{name}: probs are not distributions"


def check_budget(factory, model, seed) -> None:
    proposer, rng = factory(context_for(model)), random.Random(seed)
    name = proposer_name(proposer)
    for budgets in ([0, 0, 0, 0], [1, 2, 3, 4], [4, 0, 4, 1]):
        requests = _requests(rng, ["a", "b", "c", "d"], budgets)
        _check_drafts(name, requests, proposer.propose(requests))
    for seq_id in "abcd":
        proposer.release(seq_id)


def check_rows_join_and_leave(factory, model, seed) -> None:
    proposer, rng = factory(context_for(model)), random.Random(seed)
    name = proposer_name(proposer)
    live: list[str] = []
    for step in range(40):
        if live and rng.random() < 0.3:
            proposer.release(live.pop(rng.randrange(len(live))))
        if len(live) < ROWS and rng.random() < 0.6:
            live.append(f"r{rng.randrange(6)}" if f"r{step % 6}" in live else f"r{step % 6}")
            live = list(dict.fromkeys(live))
        if live:
            requests = _requests(rng, live, [rng.randrange(K + 1) for _ in live], 16 + step % 9)
            _check_drafts(name, requests, proposer.propose(requests))
    for seq_id in live:
        proposer.release(seq_id)


def check_release_frees_state(factory, model, seed) -> None:
    proposer, rng = factory(context_for(model)), random.Random(seed)
    name = proposer_name(proposer)

    def serve(count: int) -> None:
        for i in range(count):
            seq_id = f"leak{i}"
            proposer.propose(_requests(rng, [seq_id], [K], 40))
            proposer.release(seq_id)

    serve(50)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    serve(LEAK_REQUESTS)
    gc.collect()
    growth = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert growth < LEAK_BYTES, (f"{name}: {growth} bytes more after {LEAK_REQUESTS} released requests: "
                                 "release(seq_id) must free what the row kept")


def _engine(model: CompactLlama, proposer: Proposer, rows: int) -> Engine:
    return Engine(model, None, proposer, RejectionSampler(), K, rows, MAX_LEN)


def greedy_prompts(seed: int) -> list[list[int]]:
    """Six repetitive prompts (model-free proposers find drafts), the last a copy of the first."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(VOCAB) for _ in range(5)] * 4 for _ in range(5)]
    return prompts + [list(prompts[0])]


def check_greedy_equals_plain(factory, model, seed) -> Proposer:
    """Greedy output through the embedded engine equals plain decoding; returns the proposer it ran."""
    requests = [Request(i, p, 24) for i, p in enumerate(greedy_prompts(seed))]
    plain = engine_tokens(_engine(model, NoProposer(), ROWS), requests)
    proposer = factory(context_for(model))
    spec = engine_tokens(_engine(model, proposer, ROWS), requests)
    name = proposer_name(proposer)
    assert spec == plain, f"{name}: greedy output differs from plain decoding: {spec} vs {plain}"
    return proposer


def engine_tokens(engine: Engine, requests: list[Request]) -> dict:
    out: dict = {}
    for step in engine.run(requests):
        out.setdefault(step.request_id, []).extend(step.new_token_ids)
    assert_no_faults(proposer_name(engine.proposer), engine.faults, "in the embedded engine")
    return out


def assert_no_faults(name: str, faults, where: str) -> None:
    """A host keeps serving past a proposer that raises or drafts garbage (its rows decode plainly), so the
    output alone cannot show it: the kit fails on any fault the host caught."""
    caught = faults.take()
    assert not caught, f"{name}: failed {where}: " + "; ".join(f"{f.cause} (in {f.stage})" for f in caught)


def check_sampling_follows_the_target(factory, model, seed, rows: int = 250, batches: int = 8) -> None:
    """The second sampled token (the first that drafts can touch: prefill gives the first, then one draft
    is verified) against its exact marginal under the target, P(t2) = sum over t1 of P(t1) P(t2 | t1):
    a chi-square test over rows * batches samples."""
    from scipy.stats import chisquare

    prompt = [3, 7, 11, 3, 7, 11, 3, 7]
    proposer = factory(context_for(model, rows))
    name = proposer_name(proposer)
    engine = _engine(model, proposer, rows)
    counts = torch.zeros(VOCAB, dtype=torch.float64)
    for batch in range(batches):
        requests = [Request(i, prompt, 3, SamplingParams(1.0, seed=seed * 10**6 + batch * rows + i))
                    for i in range(rows)]
        for tokens in engine_tokens(engine, requests).values():
            counts[tokens[1]] += 1
    expected = _second_token_marginal(model, prompt) * counts.sum()
    keep = expected >= 5
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    wanted = torch.cat([expected[keep], expected[~keep].sum()[None]])
    p_value = chisquare(observed.numpy(), wanted.numpy()).pvalue
    assert p_value > 1e-4, f"{name}: sampled tokens do not follow the target's distribution (p = {p_value:.2e})"


@torch.inference_mode()
def full_logits(model: CompactLlama, tokens: list[int]) -> torch.Tensor:
    """[T, V] the target's logits after each of ``tokens``: one forward from an empty cache, one row."""
    cache = model.new_cache(1, len(tokens) + 1)
    positions = torch.arange(len(tokens), device=model.device)[None]
    return model(torch.tensor([tokens], device=model.device), positions, cache, slice(0, 1))[0]


def _second_token_marginal(model: CompactLlama, prompt: list[int]) -> torch.Tensor:
    def next_probs(tokens: list[int]) -> torch.Tensor:
        return torch.softmax(full_logits(model, tokens)[-1].double(), -1)

    first = next_probs(prompt)
    return sum(first[t] * next_probs(prompt + [t]) for t in range(VOCAB))
