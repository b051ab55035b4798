"""Prompts: raw text or chat messages, and the JSONL prompts file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specplug.errors import SpecplugError

Prompt = str | list[dict[str, str]]  # raw text, or chat messages [{"role": ..., "content": ...}]


def read_prompts_file(path: str | Path) -> list[Prompt]:
    """One JSON object per line: {"prompt": "..."} or {"messages": [...]}. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise SpecplugError(f"prompts file '{path}' not found")
    prompts: list[Prompt] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            prompts.append(parse_prompt_line(line, f"{path}:{number}"))
    if not prompts:
        raise SpecplugError(f"prompts file '{path}' holds no prompts")
    return prompts


def parse_prompt_line(line: str, where: str) -> Prompt:
    try:
        item: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpecplugError(f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object like "
                            '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}') from None
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        return item["prompt"]
    if isinstance(item, dict) and _is_messages(item.get("messages")):
        return item["messages"]
    raise SpecplugError(f'{where}: expected {{"prompt": "<text>"}} or {{"messages": [{{"role": ..., '
                        '"content": ...}]}}')


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value)


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt; chat messages go through the model's chat template."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise SpecplugError("chat messages given, but the model's tokenizer has no chat template; "
                            'use {"prompt": "..."} with raw text instead')
    encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)
