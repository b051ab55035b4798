"""Prompts: raw text or chat messages, and the JSONL prompts file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specplug.config.checks import sampling_problem
from specplug.errors import SpecplugError

Prompt = str | list[dict[str, str]]  # raw text, or chat messages [{"role": ..., "content": ...}]


EXAMPLE = '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}'
MESSAGE = '{"role": "...", "content": "..."}'


@dataclass(frozen=True)
class PromptLine:
    """One line of a prompts file: the prompt, and the seed it samples with when the line names one."""

    prompt: Prompt
    seed: int | None = None


def read_prompts_file(path: str | Path) -> list[Prompt]:
    """One JSON object per line: {"prompt": "..."} or {"messages": [...]}. Blank lines are skipped."""
    return [line.prompt for line in read_prompt_lines(path)]


def read_prompt_lines(path: str | Path) -> list[PromptLine]:
    """The prompts file's lines, each with its optional ``"seed"``."""
    path = Path(path)
    if path.is_dir():
        raise SpecplugError(f"prompts file '{path}' is a directory, not a file: point --prompts-file at a JSONL "
                            "file (one JSON object per line)")
    if not path.is_file():
        raise SpecplugError(f"prompts file '{path}' not found")
    prompts: list[PromptLine] = []
    for number, line in _utf8_lines(path):
        if line.strip():
            where = f"{path}:{number}"
            prompts.append(PromptLine(parse_prompt_line(line, where), _seed(json.loads(line), where)))
    if not prompts:
        raise SpecplugError(f"prompts file '{path}' holds no prompts")
    return prompts


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, split on newlines only (JSON strings may hold U+2028 and the like)."""
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise SpecplugError(f"prompts file '{path}' is not UTF-8 at line {number} (byte "
                                    f"0x{exc.object[exc.start]:02x}): save the file as UTF-8") from None


def parse_prompt_line(line: str, where: str) -> Prompt:
    try:
        item: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpecplugError(f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object like "
                            f"{EXAMPLE}") from None
    if not isinstance(item, dict):
        raise SpecplugError(f"{where}: expected a JSON object, got {_json_type(item)}; each line must be one "
                            f"JSON object like {EXAMPLE}")
    if isinstance(item.get("prompt"), str):
        check_text(item["prompt"], f'{where}: "prompt"')
        return item["prompt"]
    if "messages" in item:
        return _messages(item["messages"], where)
    if "prompt" in item:
        raise SpecplugError(f'{where}: "prompt" must be a string, got {_json_type(item["prompt"])}')
    keys = ", ".join(f'"{key}"' for key in item) or "none"
    raise SpecplugError(f'{where}: no "prompt" or "messages" key (keys found: {keys}); use {EXAMPLE}')


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else _json_type(value)
        raise SpecplugError(f'{where}: "messages" must be a non-empty list of {MESSAGE} objects, got {got}')
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise SpecplugError(f"{where}: messages[{index}] must be an object like {MESSAGE}, "
                                f"got {_json_type(message)}")
        for key in ("role", "content"):
            if key not in message:
                raise SpecplugError(f'{where}: messages[{index}] has no "{key}"; each message is {MESSAGE}')
            if not isinstance(message[key], str):
                raise SpecplugError(f'{where}: messages[{index}]["{key}"] must be a string, '
                                    f"got {_json_type(message[key])}")
            check_text(message[key], f'{where}: messages[{index}]["{key}"]')
    return value


def _seed(item: dict[str, Any], where: str) -> int | None:
    seed = item.get("seed")
    problem = sampling_problem(seed=seed)
    if problem is not None:
        raise SpecplugError(f"{where}: {problem[1]}")
    return seed


def check_text(text: str, where: str) -> None:
    """Refuse text that is not valid Unicode: a lone UTF-16 surrogate (JSON's "\\ud800" alone) cannot be
    encoded, so no tokenizer can read it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SpecplugError(f"{where} holds a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) at character "
                            f"{exc.start}: send valid Unicode (pair the surrogate with its other half, or remove "
                            "it)") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


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
