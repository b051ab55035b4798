"""Turning a request's growing token list into text that is safe to stream.

Text is decoded from every generated token at once (a token may finish a character another began),
then held back where it could still change: an unfinished UTF-8 character (decoded as U+FFFD) or the
start of a stop string. A found stop string ends the text before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from specplug.engine.stopping import cut_at_stop


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still turn out to begin a stop string."""
    longest = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


class TextStream:
    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.sent = 0  # characters already streamed

    def push(self, token_ids: Sequence[int], finished: bool) -> str:
        """Add new tokens; return the text that may be shown now (all of it once ``finished``)."""
        self.token_ids.extend(token_ids)
        text, stopped = cut_at_stop(self.text(), self.stop)
        if not finished and not stopped:
            text = text[: len(text) - held_back(text, self.stop)]
            text = text.rstrip("\ufffd")  # an unfinished character waits for its next bytes
        delta, self.sent = text[self.sent:], max(self.sent, len(text))
        return delta

    def text(self) -> str:
        return self.tokenizer.decode(self.token_ids, skip_special_tokens=True)

    def final_text(self) -> str:
        return cut_at_stop(self.text(), self.stop)[0]
