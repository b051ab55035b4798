"""The vLLM flags that serve a specplug config: ``python -m specplug_vllm.flags --config configs/X.yaml``.

Most proposers run inside vLLM through ``custom_class`` (``specplug_vllm.Proposer``). A proposer whose
plugin module offers ``vllm_speculative_config(options, k)`` maps to one of vLLM's own methods instead
(``eagle3``: vLLM drafts with the same head checkpoint, from its own aux hidden states).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from specplug.config import Config, load_config
from specplug.errors import SpecplugError
from specplug.hosting.building import native_method
from specplug.plugins import load_registry


def speculative_config(config: Config) -> dict:
    """vLLM's ``speculative_config`` for ``config``'s proposer."""
    return native_method(config, load_registry(), "vllm_speculative_config") or {
        "method": "custom_class", "model": "specplug_vllm.Proposer",
        "num_speculative_tokens": config.num_speculative_tokens}


def flags(config_path: str) -> str:
    """The shell words to add to ``vllm serve MODEL`` (with SPECPLUG_CONFIG where the adapter reads it)."""
    config = load_config(config_path)
    spec = speculative_config(config)
    words = f"--speculative-config {shlex.quote(json.dumps(spec))}"
    if spec["method"] == "custom_class":
        return f"SPECPLUG_CONFIG={shlex.quote(config_path)} vllm serve MODEL {words}"
    return (f"vllm serve MODEL {words}  # vLLM's own {spec['method']} method: specplug's live swaps and auto do "
            "not apply to it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specplug_vllm.flags", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a specplug config file")
    args = parser.parse_args(argv)
    try:
        print(flags(args.config))
    except SpecplugError as exc:
        print(f"specplug: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
