"""Training data for an EAGLE-3 head: the target's own greedy answers, with the target's features.

The embedded engine decodes the prompts in batches with a ``FeatureRecorder`` as its proposer: it drafts
nothing and keeps the features the engine hands every proposer that asks (``on_target_features``), so
the features cost no forward beyond the decoding itself. Samples are written in shards as they finish,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from specplug.engine.engine import Engine, Request
from specplug.metadata import Draft, DraftRequest
from specplug.prompts import Prompt, encode_prompt
from specplug.proposers.base import Proposer
from specplug.verifiers.rejection import RejectionSampler

SHARD_PROMPTS = 64  # prompts per shard file
FEATURE_DTYPE = torch.bfloat16  # stored features: half the memory, and the head trains in float32 anyway

@dataclass
class Sample:
    token_ids: list[int]  # [L] prompt + answer
    num_prompt_tokens: int
    features: torch.Tensor  # [L - 1, F] the target's features at every position but the last

    @property
    def answer_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class FeatureRecorder(Proposer):
    """Drafts nothing; keeps every row's target features until ``take``."""

    name = "feature-recorder"

    def __init__(self, layers: tuple[int, ...]):
        self.feature_layers = tuple(layers)
        self.chunks: dict[Hashable, list[torch.Tensor]] = {}

    def on_target_features(self, seq_id: Hashable, first_position: int, features: torch.Tensor) -> None:
        self.chunks.setdefault(seq_id, []).append(features.to(FEATURE_DTYPE))

    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        return [Draft([]) for _ in requests]

    def take(self, seq_id: Hashable) -> torch.Tensor:
        return torch.cat(self.chunks.pop(seq_id))


def generate(model, tokenizer, eos_token_ids, prompts: list[Prompt], layers: tuple[int, ...], answer_tokens: int,
             token_budget: int, shard_dir: Path, rows: int = 32, log=sys.stderr) -> list[Sample]:
    """Samples for ``prompts`` until ``token_budget`` answer tokens, reading the shards already written."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []

    def enough() -> bool:
        return sum(s.answer_tokens for s in samples) >= token_budget

    with tqdm(total=token_budget, desc="target answers", unit="tok", file=log) as bar:
        first = 0
        while first < len(prompts) and not enough() and _shard_path(shard_dir, first).is_file():
            shard = [Sample(**item) for item in torch.load(_shard_path(shard_dir, first))]
            samples.extend(shard)
            bar.update(sum(s.answer_tokens for s in shard))
            first += SHARD_PROMPTS
        if first < len(prompts) and not enough():
            for start, shard in _decode(model, tokenizer, eos_token_ids, prompts, first, layers, answer_tokens, rows):
                torch.save([vars(s) for s in shard], _shard_path(shard_dir, start))
                samples.extend(shard)
                bar.update(sum(s.answer_tokens for s in shard))
                if enough():
                    break
    return samples


def _shard_path(shard_dir: Path, first: int) -> Path:
    return shard_dir / f"shard-{first // SHARD_PROMPTS:05d}.pt"


def _decode(model, tokenizer, eos_token_ids, prompts: list[Prompt], first: int, layers: tuple[int, ...],
            answer_tokens: int, rows: int) -> Iterator[tuple[int, list[Sample]]]:
    """(first prompt, samples) of each shard from ``prompts[first:]`` on, in order, decoded in one engine run
    so that the rows stay full across the shards' ends."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts[first:]]
    recorder = FeatureRecorder(layers)
    max_len = max(map(len, encoded)) + answer_tokens + 2
    engine = Engine(model, None, recorder, RejectionSampler(), 1, min(rows, len(encoded)), max_len, 0, eos_token_ids)
    done: dict[int, Sample] = {}
    start = 0
    for output in engine.run([Request(i, ids, answer_tokens) for i, ids in enumerate(encoded)]):
        if output.finish_reason is None:
            continue
        row = output.row
        done[output.request_id] = Sample(list(row.token_ids), row.num_prompt_tokens, recorder.take(row.seq_id))
        while start < len(encoded) and all(i in done for i in range(start, min(start + SHARD_PROMPTS, len(encoded)))):
            end = min(start + SHARD_PROMPTS, len(encoded))
            yield first + start, [done.pop(i) for i in range(start, end)]
            start = end
