"""The kit's check on a real model (by default SmolLM2-135M, which specplug's setup installs): greedy
output through the embedded engine equals plain decoding of the same engine, on chat prompts that give
model-free proposers something to draft from and on one that does not.

In fp32 a verify step of k + 1 tokens and a one-token step round differently, so two greedy runs may
part where the target's top two logits are within rounding of each other (a near tie, the same rule as
``specplug bench``); any other difference fails.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from specplug.engine.engine import Engine, Request
from specplug.errors import SpecplugError
from specplug.metadata import ProposerContext
from specplug.models.loader import compact_from_hf, eos_ids, load_hf_model, load_tokenizer, resolve_model
from specplug.models.ties import top_two_gap
from specplug.prompts import encode_prompt
from specplug.proposers.base import Proposer, proposer_name
from specplug.proposers.none import NoProposer
from specplug.testing.checks import K, ROWS, engine_tokens, full_logits
from specplug.verifiers.rejection import RejectionSampler

MAX_NEW = 32
MAX_LEN = 512
PROMPTS = (
    "Repeat this list exactly, one item per line: red apples, green pears, yellow lemons, purple plums, "
    "orange peaches.",
    "Rename the variable total to subtotal in this code and return the full code:\n\n"
    "def price(items):\n    total = 0\n    for item in items:\n        total += item.cost\n    return total\n",
    "Write a short poem about the sea at night.",
)


@functools.cache
def real_target(spec: str) -> tuple:
    """(model, tokenizer, eos token ids) of ``spec`` in fp32 on the CPU, loaded once per process."""
    try:
        model_dir = resolve_model(spec)
    except SpecplugError as error:
        raise SpecplugError(f"the conformance kit's real-model check cannot load '{spec}': {error}; "
                            "or pass real_model=None to skip it") from None
    tokenizer = load_tokenizer(model_dir)
    hf_model = load_hf_model(model_dir, torch.float32)
    return compact_from_hf(hf_model, torch.float32, torch.device("cpu")), tokenizer, eos_ids(hf_model, tokenizer)


def _run(spec: str, proposer: Proposer) -> dict:
    model, tokenizer, eos = real_target(spec)
    requests = [Request(i, encode_prompt(tokenizer, [{"role": "user", "content": p}]), MAX_NEW)
                for i, p in enumerate(PROMPTS)]
    engine = Engine(model, tokenizer, proposer, RejectionSampler(), K, ROWS, MAX_LEN, eos_token_ids=eos)
    out = engine_tokens(engine, requests)
    return {r.request_id: (r.prompt_token_ids, out.get(r.request_id, [])) for r in requests}


@functools.cache
def _plain(spec: str) -> dict:
    return _run(spec, NoProposer())


def real_context(spec: str) -> ProposerContext:
    model, tokenizer, _ = real_target(spec)
    return ProposerContext(K, model.shape.vocab_size, model.device, ROWS, MAX_LEN, tokenizer, model)


def check_greedy_on_the_real_model(factory: Callable[[ProposerContext], Proposer], spec: str) -> None:
    plain = _plain(spec)
    proposer = factory(real_context(spec))
    name = proposer_name(proposer)
    for request_id, (prompt, tokens) in _run(spec, proposer).items():
        reference = plain[request_id][1]
        where = next((i for i, (a, b) in enumerate(zip(reference, tokens)) if a != b), None)
        if where is None:
            assert len(tokens) == len(reference), (f"{name}: on {spec}, prompt {request_id} gave {len(tokens)} "
                                                   f"tokens, plain decoding {len(reference)}")
            continue
        gap, threshold = top_two_gap(full_logits(real_target(spec)[0], prompt + reference[:where])[-1], torch.float32)
        assert gap <= threshold, (f"{name}: on {spec}, greedy output of prompt {request_id} parts from plain "
                                  f"decoding at token {where} ({tokens[where]} vs {reference[where]}), where the "
                                  f"target's top-2 logit gap is {gap:.4f}, not a near tie (<= {threshold})")
