from __future__ import annotations

from abc import ABC, abstractmethod

from specplug.metadata import VerifyInput, VerifyOutput


class Verifier(ABC):
    """Decides, for every row, which draft tokens the target keeps and which token follows them."""

    name: str = "verifier"

    @abstractmethod
    def verify(self, batch: VerifyInput) -> VerifyOutput:
        """Return the emitted tokens (accepted drafts + one recovered or bonus token) of every row."""
