"""What `specplug generate` writes while a batch runs: each prompt's result in input order, as soon as it
and every earlier prompt are done.

Rows finish in any order. Text mode streams the row that is printed next and buffers the others' text
until their turn; JSON mode writes one object per prompt (to stdout, or appended to ``--output``),
flushed, so an interrupted run keeps every result it wrote. A progress bar goes to stderr when it is a
terminal.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from specplug.engine.engine import StepOutput
from specplug.engine.text import TextStream
from specplug.errors import SpecplugError


def done_indices(path: Path) -> set[int]:
    """Indices of the prompts an earlier run already wrote to ``path`` (``--resume``)."""
    if not path.exists():
        return set()
    done = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            done.add(int(json.loads(line)["index"]))
        except (ValueError, KeyError, TypeError):
            raise SpecplugError(f"{path}:{number} is not a result line of specplug generate --json; "
                                "--resume needs the file an earlier run wrote") from None
    return done


class OrderedResults:
    """``on_step`` receives every engine output; results come out in input order."""

    def __init__(self, tokenizer, stop, indices: list[int], completion: Callable[[Any], Any], json_outs: list[IO],
                 text_out: IO | None = None, progress=None):
        self.tokenizer, self.stop, self.completion = tokenizer, stop, completion
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
        line = json.dumps({"index": completion.index, "text": completion.text, "token_ids": completion.token_ids,
                           "finish_reason": completion.finish_reason, "stats": completion.stats}) + "\n"
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
