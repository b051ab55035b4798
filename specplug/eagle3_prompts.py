"""Prompts an EAGLE-3 head's training data answers, when the user brings none of their own traffic.

``self_written``: user messages the target writes itself (Magpie, Xu et al. 2024). The chat template is
fed up to where a user's message starts and sampled until the model ends the turn, so the prompts read
like the chat traffic the model was tuned on, far more varied than a template. ``templated``: every
task of a short list about every topic of another (the shipped head's first data).
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from specplug.engine.engine import Engine, Request
from specplug.errors import SpecplugError
from specplug.metadata import SamplingParams
from specplug.prompts import Prompt
from specplug.proposers.none import NoProposer
from specplug.verifiers.rejection import RejectionSampler

SELF_WRITTEN_TOKENS = (8, 64)  # a self-written message is kept if the model ended it within these lengths
SELF_WRITTEN_SAMPLING = SamplingParams(temperature=1.0, top_p=0.95)  # each message with a seed of its own
SAVE_EVERY = 64  # prompts
_CUT = "\x00specplug-user-message\x00"


def self_written(model, tokenizer, eos_token_ids, count: int, path: Path, rows: int = 32,
                 log=sys.stderr) -> list[Prompt]:
    """``count`` distinct user messages the target wrote (seeds 0, 1, ...), kept in ``path`` (JSONL) as they
    are made, so a second run (or one that was interrupted) reads them instead."""
    prompts, seed = _read(path)
    if len(prompts) >= count:
        return prompts[:count]
    prefix = user_turn_prefix(tokenizer)
    shortest, longest = SELF_WRITTEN_TOKENS
    engine = Engine(model, tokenizer, NoProposer(), RejectionSampler(), 1, rows, len(prefix) + longest + 2, 0,
                    eos_token_ids)
    seen, in_flight = {p[0]["content"] for p in prompts}, 0
    with tqdm(total=count, initial=len(prompts), desc="self-written prompts", unit="prompt", file=log) as bar:
        while len(prompts) < count:
            for _ in range(2 * rows - in_flight):  # a queue beyond the rows, so they stay full
                engine.add_request(Request(seed, prefix, longest, replace(SELF_WRITTEN_SAMPLING, seed=seed)))
                seed, in_flight = seed + 1, in_flight + 1
            for output in engine.step():
                if output.finish_reason is None:
                    continue
                in_flight -= 1
                row = output.row
                text = tokenizer.decode(row.token_ids[len(prefix):], skip_special_tokens=True).strip()
                if output.finish_reason == "stop" and len(row.token_ids) - len(prefix) >= shortest and text not in seen:
                    seen.add(text)
                    prompts.append([{"role": "user", "content": text}])
                    bar.update(len(prompts) <= count)
                    if len(prompts) % SAVE_EVERY == 0 or len(prompts) == count:
                        _write(path, prompts, seed)
    return prompts[:count]


def user_turn_prefix(tokenizer) -> list[int]:
    """The chat template's token ids up to where a user's message starts (system prompt included)."""
    if not getattr(tokenizer, "chat_template", None):
        raise SpecplugError("self-written prompts need the model's chat template, and this tokenizer has none; "
                            "pass your traffic with --prompts-file")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _CUT}], tokenize=False)
    return list(tokenizer(text[: text.index(_CUT)], add_special_tokens=False)["input_ids"])


def _read(path: Path) -> tuple[list[Prompt], int]:
    """The prompts kept at ``path`` and the seed the next one is sampled with (none yet: [], 0)."""
    text = path.read_text() if path.is_file() else ""
    if not text.strip():
        return [], 0
    first, *lines = text.splitlines()
    return [json.loads(line)["messages"] for line in lines], json.loads(first)["next_seed"]


def _write(path: Path, prompts: list[Prompt], next_seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    lines = [json.dumps({"next_seed": next_seed})] + [json.dumps({"messages": p}) for p in prompts]
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)


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


def templated() -> list[Prompt]:
    """Templated chat prompts (every task about every topic, interleaved so that a prefix is varied)."""
    pairs = sorted(itertools.product(TASKS, TOPICS), key=lambda p: (TOPICS.index(p[1]) * 7 + TASKS.index(p[0])) % 97)
    return [[{"role": "user", "content": task.format(topic=topic)}] for task, topic in pairs]
