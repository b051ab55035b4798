"""Stop strings: detect them in the decoded output and cut the text before them."""

from __future__ import annotations

from collections.abc import Sequence


class StopChecker:
    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        # enough trailing tokens to contain any stop string (a token is at least one character)
        self.window = max((len(s) for s in self.stop), default=0) + 8

    def hit(self, token_ids: list[int], num_prompt: int) -> bool:
        """True when the output's tail now contains a stop string."""
        if not self.stop:
            return False
        tail = self.tokenizer.decode(token_ids[max(num_prompt, len(token_ids) - self.window):])
        return any(s in tail for s in self.stop)

    def cut(self, text: str) -> str:
        """``text`` up to the first stop string (the whole text when none occurs)."""
        return cut_at_stop(text, self.stop)[0]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` before the first stop string, and whether one was found."""
    positions = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(positions)], True) if positions else (text, False)
