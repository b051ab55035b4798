"""Command-line arguments shared by the built-in commands and the commands plugins add
(``register.command``): the config file, ``--set`` overrides and the generation size."""

from __future__ import annotations

import argparse

from specplug.errors import SpecplugError


def add_config_args(parser: argparse.ArgumentParser, max_new_tokens: bool = True) -> None:
    parser.add_argument("--config", help="YAML/JSON config file, or the name of one that ships with specplug (ngram, suffix, "
                        "eagle3, ...; default: $SPECPLUG_CONFIG, else built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted, e.g. proposer.name=none); repeatable")
    if max_new_tokens:
        parser.add_argument("--max-new-tokens", type=int, help="tokens to generate per prompt (default: config)")


def check_sizes(args: argparse.Namespace) -> None:
    """One-line errors for sizes argparse accepts as integers but no command can use."""
    if getattr(args, "max_new_tokens", None) is not None and args.max_new_tokens < 1:
        raise SpecplugError(f"--max-new-tokens must be >= 1 (got {args.max_new_tokens})")
    if getattr(args, "batch_size", 1) < 1:
        raise SpecplugError(f"--batch-size must be >= 1 (got {args.batch_size})")
