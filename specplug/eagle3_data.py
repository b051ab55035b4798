"""Training data for an EAGLE-3 head: the target's own greedy answers, with the target's features.

The embedded engine decodes the prompts in batches with a ``FeatureRecorder`` as its proposer: it drafts
nothing and keeps the features the engine hands every proposer that asks (``on_target_features``), so
the features cost no forward beyond the decoding itself. Samples are written in shards as they finish,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Hashable, Sequence
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

TOPICS = (
    "the water cycle", "photosynthesis", "black holes", "the French Revolution", "volcanoes", "machine learning",
    "the immune system", "climate change", "the printing press", "honeybees", "compound interest", "recycling",
    "the Roman Empire", "electric cars", "sleep", "coffee", "chess", "the internet", "earthquakes", "vaccines",
    "the moon landing", "renewable energy", "ancient Egypt", "jazz music", "the human heart", "rainforests",
    "cryptography", "the stock market", "dinosaurs", "gardening", "public libraries", "bread baking",
    "the Olympic Games", "coral reefs", "democracy", "friendship", "time management", "bicycles", "glaciers",
    "the solar system", "video games", "healthy breakfasts", "city parks", "social media", "deserts",
    "the piano", "penguins", "budgeting", "airplanes", "museums", "tea", "robots", "rivers", "poetry",
)
TASKS = (
    "Explain {topic} in simple terms.", "Write a short paragraph about {topic}.",
    "What are the most important facts about {topic}?", "Give me three interesting things about {topic}.",
    "Why does {topic} matter?", "Write a short poem about {topic}.", "Describe {topic} to a child.",
    "What is the history of {topic}?", "List the pros and cons of {topic}.", "How would you teach {topic}?",
    "Write a blog post introduction about {topic}.", "What are common misconceptions about {topic}?",
    "Summarize what people should know about {topic}.", "Tell me a story that involves {topic}.",
    "What questions do scientists still have about {topic}?", "Write a short dialogue about {topic}.",
    "How has {topic} changed over time?", "Give advice to a beginner interested in {topic}.",
    "Compare {topic} with something similar.", "Write a quiz with three questions about {topic}.",
    "What would the world be like without {topic}?", "Describe a day spent learning about {topic}.",
    "Write an encyclopedia-style entry on {topic}.", "What are the main parts of {topic}?",
    "Explain how {topic} works, step by step.", "Write a letter to a friend about {topic}.",
)


def default_prompts() -> list[Prompt]:
    """Templated chat prompts (every task about every topic, interleaved so that a prefix is varied)."""
    pairs = sorted(itertools.product(TASKS, TOPICS), key=lambda p: (TOPICS.index(p[1]) * 7 + TASKS.index(p[0])) % 97)
    return [[{"role": "user", "content": task.format(topic=topic)}] for task, topic in pairs]


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
    shards = range(0, len(prompts), SHARD_PROMPTS)
    with tqdm(total=token_budget, desc="target answers", unit="tok", file=log) as bar:
        for first in shards:
            if sum(s.answer_tokens for s in samples) >= token_budget:
                break
            path = shard_dir / f"shard-{first // SHARD_PROMPTS:05d}.pt"
            if path.is_file():
                shard = [Sample(**item) for item in torch.load(path)]
            else:
                shard = _decode(model, tokenizer, eos_token_ids, prompts[first: first + SHARD_PROMPTS], layers,
                                answer_tokens, rows)
                torch.save([vars(s) for s in shard], path)
            samples.extend(shard)
            bar.update(sum(s.answer_tokens for s in shard))
    return samples


def _decode(model, tokenizer, eos_token_ids, prompts: list[Prompt], layers: tuple[int, ...], answer_tokens: int,
            rows: int) -> list[Sample]:
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    recorder = FeatureRecorder(layers)
    max_len = max(map(len, encoded)) + answer_tokens + 2
    engine = Engine(model, None, recorder, RejectionSampler(), 1, min(rows, len(encoded)), max_len, 0, eos_token_ids)
    done: dict[int, Sample] = {}
    for output in engine.run([Request(i, ids, answer_tokens) for i, ids in enumerate(encoded)]):
        if output.finish_reason is not None:
            row = output.row
            done[output.request_id] = Sample(list(row.token_ids), row.num_prompt_tokens, recorder.take(row.seq_id))
    return [done[i] for i in range(len(encoded))]
