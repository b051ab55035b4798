"""User-facing errors: each message names the problem and the fix, and the CLI prints it as one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpecplugError(Exception):
    """An error caused by input (config, model path, prompts, plugins), not by a bug in specplug."""


class ConfigError(SpecplugError):
    """A configuration value is missing, unknown or out of range."""


def closest(word: str, choices: Iterable[str]) -> str:
    """Return a ' (did you mean X?)' hint for the closest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
