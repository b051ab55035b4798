"""What `specplug generate` writes while a batch runs: each prompt's result in input order, as soon as it
and every earlier prompt are done.

Rows finish in any order. Text mode streams the row that is printed next and buffers the others' text
until their turn; JSON mode writes one object per prompt (to stdout, or appended to ``--output``),
flushed, so an interrupted run keeps every result it wrote. A progress bar goes to stderr when it is a
terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from specplug.config import Config
from specplug.engine.engine import StepOutput
from specplug.engine.text import TextStream
from specplug.errors import SpecplugError
from specplug.prompts import PromptLine

OTHER_SETTINGS = "model, dtype, max_model_len, max_new_tokens, stop, sampling, verifier, or a sampled run's strategy"


def check_output(path: Path) -> None:
    """Refuse an ``--output`` that cannot be written, before anything is loaded."""
    if path.is_dir():
        raise SpecplugError(f"--output '{path}' is a directory: give a file path, e.g. {path / 'results.jsonl'}")
    if not path.parent.is_dir():
        raise SpecplugError(f"--output '{path}': directory '{path.parent}' does not exist: create it first")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SpecplugError(f"--output '{path}' cannot be written (permission denied): choose another path")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def settings_fingerprint(config: Config, max_new_tokens: int | None) -> str:
    """What decides a run's outputs besides its prompts. The strategy counts only for a sampled run: greedy
    speculation is lossless, so a greedy run may be resumed with another proposer."""
    s = config.sampling
    settings: dict[str, Any] = {
        "model": config.model, "dtype": config.dtype, "max_model_len": config.max_model_len,
        "max_new_tokens": max_new_tokens or config.max_new_tokens, "stop": list(config.stop),
        "sampling": [s.greedy, s.temperature, s.top_k, s.top_p, s.seed],
        "verifier": [config.verifier.name, config.verifier.options]}
    if not s.greedy:
        settings["strategy"] = [config.proposer.name, config.proposer.options, config.num_speculative_tokens,
                                config.adaptive_k]
    return _digest(settings)


def prompt_fingerprint(line: PromptLine) -> str:
    return _digest([line.prompt, line.seed])


def done_indices(path: Path, settings: str, prompts: list[str]) -> set[int]:
    """Indices of the prompts an earlier run already wrote to ``path`` (``--resume``), refused in one line
    when that run had other settings or other prompts (``prompts``: each prompt's fingerprint). A last line
    cut off by an interrupted write is dropped from the file (its prompt is generated again)."""
    if not path.exists():
        return set()
    lines = _complete_lines(path)
    done = set()
    for number, line in enumerate(lines, start=1):
        if line.strip():
            done.add(_check_result(path, number, line, settings, prompts))
    return done


def _complete_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and not text.endswith("\n") and not _is_json(lines[-1]):
        kept = "".join(line + "\n" for line in lines[:-1])
        path.write_text(kept, encoding="utf-8")
        print(f"specplug: note: the last line of {path} was cut off (an interrupted write); dropped it, and its "
              "prompt is generated again", file=sys.stderr)
        lines = lines[:-1]
    return lines


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _check_result(path: Path, number: int, line: str, settings: str, prompts: list[str]) -> int:
    where = f"{path}:{number}"
    try:
        result = json.loads(line)
        index, fingerprint = int(result["index"]), result.get("fingerprint")
    except (ValueError, KeyError, TypeError):
        raise SpecplugError(f"{where} is not a result line of specplug generate --json; --resume needs the file an "
                            "earlier run wrote") from None
    if not isinstance(fingerprint, dict):
        raise SpecplugError(f"{where} has no fingerprint (an older specplug wrote it), so --resume cannot tell "
                            "which run it belongs to: write to a new --output")
    if fingerprint.get("settings") != settings:
        raise SpecplugError(f"{path} was written with other settings ({OTHER_SETTINGS}): resume with the settings "
                            "that wrote it, or write to a new --output")
    if not 0 <= index < len(prompts) or fingerprint.get("prompt") != prompts[index]:
        raise SpecplugError(f"{where} holds prompt {index} of another prompts file (not the one at line {index + 1} "
                            "here, or its seed differs): resume with the prompts file that wrote it, or write to a "
                            "new --output")
    return index


class OrderedResults:
    """``on_step`` receives every engine output; results come out in input order."""

    def __init__(self, tokenizer, stop, indices: list[int], completion: Callable[[Any], Any], json_outs: list[IO],
                 text_out: IO | None = None, progress=None, fingerprints: Callable[[int], dict] | None = None):
        self.tokenizer, self.stop, self.completion = tokenizer, stop, completion
        self.fingerprints = fingerprints  # prompt index -> what --resume checks the result line by
        self.order = indices  # original prompt indices, in the order they are written
        self.json_outs, self.text_out, self.progress = json_outs, text_out, progress
        self.streams: dict[int, TextStream] = {}
        self.pending: dict[int, str] = {}  # text not yet printed, by position in ``order``
        self.finished: dict[int, Any] = {}  # completions waiting for their turn
        self.next = 0  # position in ``order`` of the prompt written next
        self.written = 0
        self.headers = len(indices) > 1
        self.started: set[int] = set()  # positions whose header is printed

    def on_step(self, output: StepOutput) -> None:
        position = output.request_id
        stream = self.streams.setdefault(position, TextStream(self.tokenizer, self.stop))
        delta = stream.push(output.new_token_ids, output.finish_reason is not None)
        if self.text_out is not None:
            if position == self.next:
                self._text(delta)
            else:
                self.pending[position] = self.pending.get(position, "") + delta
        if output.finish_reason is not None:
            self.finished[position] = self.completion(output.row)
            self._flush()

    def _flush(self) -> None:
        while self.next in self.finished:
            completion = self.finished.pop(self.next)
            completion.index = self.order[self.next]
            self._write(completion)
            self.next += 1
            if self.progress is not None:
                self.progress.update(completion)
            if self.text_out is not None and self.next < len(self.order) and self.next in self.streams:
                self._text(self.pending.pop(self.next, ""))  # the next row's text so far, then it streams

    def _text(self, delta: str) -> None:
        if self.headers and self.next not in self.started:
            self.started.add(self.next)
            self.text_out.write(f"--- prompt {self.order[self.next]}\n")
        self.text_out.write(delta)
        self.text_out.flush()

    def _write(self, completion) -> None:
        result = {"index": completion.index, "text": completion.text, "token_ids": completion.token_ids,
                  "finish_reason": completion.finish_reason, "stats": completion.stats}
        if self.fingerprints is not None:
            result["fingerprint"] = self.fingerprints(completion.index)
        line = json.dumps(result) + "\n"
        for out in self.json_outs:
            out.write(line)
            out.flush()
        self.written += 1
        if self.text_out is not None:
            self.text_out.write("\n")
            self.text_out.flush()
            line = summary_line(completion.stats, completion.finish_reason)
            if self.progress is not None:
                self.progress.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)


def summary_line(stats: dict, finish_reason: str) -> str:
    return (f"[{stats['proposer']} k={stats['num_speculative_tokens']}] {stats['generated_tokens']} tokens "
            f"in {stats['wall_time_s']:.2f} s ({stats['tokens_per_second']:.1f} tok/s), "
            f"acceptance {stats['acceptance_rate']:.0%}, {stats['mean_accepted_per_step']:.2f} accepted/step, "
            f"{stats['target_forwards']} target forwards, finish: {finish_reason}")


class Progress:
    """A tqdm bar on stderr: prompts done, tokens/s and acceptance so far."""

    def __init__(self, total: int, done: int = 0):
        from tqdm import tqdm

        size = shutil.get_terminal_size((100, 24))  # a terminal that reports 0 x 0 (a bare pty) gets 100 x 24
        self.bar = tqdm(total=total, initial=done, unit="prompt", file=sys.stderr, ncols=size.columns,
                        nrows=size.lines)
        self.tokens = self.drafted = self.accepted = 0

    def update(self, completion) -> None:
        stats = completion.stats
        self.tokens += stats["generated_tokens"]
        self.drafted += stats["draft_tokens"]
        self.accepted += stats["accepted_tokens"]
        elapsed = max(self.bar.format_dict["elapsed"], 1e-9)
        acceptance = f"{self.accepted / self.drafted:.0%}" if self.drafted else "-"
        self.bar.set_postfix_str(f"{self.tokens / elapsed:.1f} tok/s, acceptance {acceptance}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
