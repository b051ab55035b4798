"""The ``specplug`` command: generate, serve, plugins, bench, and the commands plugins add
(``make-draft`` from draft_model, ``tune layerskip`` from layerskip)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from specplug.arguments import add_config_args, check_sizes
from specplug.errors import SpecplugError


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"specplug: warning: {message}\n"


def build_parser(registry=None, command: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``registry`` (default: every installed plugin's) supplies the plugins' commands.
    Given the ``command`` about to run, only that plugin command's arguments are added (importing its module)."""
    parser = argparse.ArgumentParser(prog="specplug", description="Speculative decoding with pluggable proposers.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text with the configured proposer")
    add_config_args(gen)
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="raw prompt text")
    source.add_argument("--prompts-file", help='JSONL: {"prompt": ...} or {"messages": [...]} per line')
    gen.add_argument("--batch-size", type=int, default=1, help="rows decoded together (default 1)")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt on stdout, in input order, "
                                                         "each written as soon as it and every earlier prompt are done")
    gen.add_argument("--output", help="also write the JSON objects to this file (a line per prompt, flushed)")
    gen.add_argument("--resume", action="store_true", help="with --output: skip the prompts already in that file "
                                                           "and append the rest")
    gen.add_argument("--quiet", action="store_true", help="no progress bar (it shows only when stderr is a terminal)")
    gen.add_argument("--compare-plain", action="store_true",
                     help="then decode the same prompts without speculation (same engine) and print one line: "
                          "tok/s of both and whether the tokens are identical")

    serve = sub.add_parser("serve", help="serve the model over HTTP (OpenAI, TGI and SageMaker-LMI protocols)")
    serve.add_argument("--config", help="YAML/JSON config file; its `serve:` section configures the server, and "
                                        "edits to it (or SIGHUP) swap strategies live")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (dotted); repeatable")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")

    plugins = sub.add_parser("plugins", help="list registered proposers and verifiers (with a name: its options)")
    plugins.add_argument("name", nargs="?", help="a proposer or verifier: print its options and capabilities")
    plugins.add_argument("--json", action="store_true", help="as JSON, with each one's options and capabilities")

    bench = sub.add_parser("bench", help="tokens/s against plain decoding and HF generate, in one run")
    add_config_args(bench)
    bench.add_argument("--prompts-file", required=True)
    bench.add_argument("--json", action="store_true")

    add_plugin_commands(sub, registry, command)
    return parser


def add_plugin_commands(sub, registry=None, only: str | None = None) -> None:
    """The commands plugins add (``register.command``, ``register.tuner``): ``specplug NAME`` and
    ``specplug tune NAME``; with ``only``, the arguments of that one alone."""
    from specplug.plugins import load_registry

    commands = sorted((registry or load_registry()).commands.values(), key=lambda c: (c.group or "", c.name))
    tuners = [c for c in commands if c.group == "tune"]
    for command in (c for c in commands if c.group is None):
        parser = sub.add_parser(command.name, help=command.help)
        if only in (None, command.name):
            command.configurer()(parser)
        parser.set_defaults(command_entry=command)
    if tuners:
        tune = sub.add_parser("tune", help="choose a proposer's settings by measurement: "
                                           + ", ".join(c.name for c in tuners))
        by_name = tune.add_subparsers(dest="tuner", required=True, metavar="PROPOSER")
        for command in tuners:
            parser = by_name.add_parser(command.name, help=command.help)
            if only in (None, "tune"):
                command.configurer()(parser)
            parser.set_defaults(command_entry=command)


def main(argv: Sequence[str] | None = None, registry=None) -> int:
    warnings.formatwarning = _one_line_warning  # before the plugins load: their warnings are one line too
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(registry, next((arg for arg in argv if not arg.startswith("-")), None)).parse_args(argv)
        if args.command == "plugins":
            return cmd_plugins(args)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "bench":
            return cmd_bench(args)
        return args.command_entry.runner()(args)
    except SpecplugError as exc:
        print(f"specplug: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `specplug plugins --json | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def cmd_plugins(args: argparse.Namespace) -> int:
    from specplug.plugins import load_registry

    registry = load_registry()
    entries = sorted(registry.entries.values(), key=lambda e: (e.kind, e.name))
    if args.name:
        entries = [e for e in entries if e.name == args.name]
        if not entries:
            registry.get("proposer", args.name)  # raises: unknown, with the known names
    rows = [{"name": e.name, "kind": e.kind, "plugin": e.plugin,
             "distribution": {"name": e.distribution[0], "version": e.distribution[1]} if e.distribution else None,
             "capabilities": dataclasses.asdict(e.capabilities) if e.capabilities else {},
             "options": e.describe_options()} for e in entries]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.name:
        print("\n\n".join(_describe_plugin(row) for row in rows))
    else:
        print(f"{'kind':<9} {'name':<16} {'plugin':<32} distribution")
        for r in rows:
            dist = f"{r['distribution']['name']} {r['distribution']['version']}" if r["distribution"] else "?"
            print(f"{r['kind']:<9} {r['name']:<16} {r['plugin']:<32} {dist}")
    return 0


def _describe_plugin(row: dict) -> str:
    capabilities = ", ".join(k for k, v in row["capabilities"].items() if v) or "-"
    lines = [f"{row['kind']} '{row['name']}' (plugin {row['plugin']})", f"  capabilities: {capabilities}",
             "  options:" if row["options"] else "  options: none"]
    for o in row["options"]:
        default = "required" if o["required"] else f"default {json.dumps(o['default'])}"
        lines.append(f"    {o['name']} ({o['type']}, {default}){': ' + o['help'] if o['help'] else ''}")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from specplug.server.app import run

    if not 0 <= args.port <= 65535:
        raise SpecplugError(f"--port must be from 0 to 65535 (got {args.port})")
    run(args.config, args.overrides, args.host, args.port)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from specplug.config import load_config
    from specplug.llm import LLM
    from specplug.prompts import PromptLine, read_prompt_lines
    from specplug.results import check_output

    check_sizes(args)
    config = load_config(args.config, args.overrides)
    lines = [PromptLine(args.prompt)] if args.prompt is not None else read_prompt_lines(args.prompts_file)
    prompts = [line.prompt for line in lines]
    output = Path(args.output) if args.output else None
    if output is not None:
        check_output(output)
    todo, fingerprints = _prompts_to_do(args, config, output, lines)
    if not todo:
        print(f"specplug: every prompt is already in {output}; nothing to do", file=sys.stderr)
        return 0
    llm = LLM(config, max_batch_size=min(args.batch_size, len(todo)))  # rows that can actually run at once
    if args.compare_plain:
        llm.generate(prompts[:1], 4)  # the first forwards of a process are slow: keep them out of the timing
    seeds = [lines[i].seed if lines[i].seed is not None else llm.request_seed(i) for i in todo]
    with contextlib.ExitStack() as stack:
        results = _results(args, llm, output, todo, len(prompts), stack, fingerprints)
        started = time.perf_counter()
        try:
            completions = llm.generate([prompts[i] for i in todo], args.max_new_tokens, on_step=results.on_step,
                                       seeds=seeds)
        except KeyboardInterrupt:
            kept = f"; their results are in {output}" if output else ""
            print(f"\nspecplug: interrupted: {results.written} of {len(todo)} prompts done{kept}", file=sys.stderr)
            return 130
        seconds = time.perf_counter() - started
    if args.compare_plain:
        print(compare_with_plain(llm, [prompts[i] for i in todo], completions, seconds, args.max_new_tokens,
                                 seeds), file=sys.stderr)
    return 0


def _prompts_to_do(args: argparse.Namespace, config, output: Path | None, lines) -> tuple[list[int], object]:
    """The prompt indices still to generate, and each result's fingerprint (what --resume checks)."""
    from specplug.results import done_indices, prompt_fingerprint, settings_fingerprint

    settings = settings_fingerprint(config, args.max_new_tokens)
    prompts = [prompt_fingerprint(line) for line in lines]

    def fingerprint(index: int) -> dict:
        return {"settings": settings, "prompt": prompts[index]}

    if not args.resume:
        return list(range(len(lines))), fingerprint
    if output is None:
        raise SpecplugError("--resume needs --output FILE: the results file of the run to continue")
    done = done_indices(output, settings, prompts)
    return [i for i in range(len(lines)) if i not in done], fingerprint


def _results(args: argparse.Namespace, llm, output: Path | None, todo: list[int], total: int,
             stack: contextlib.ExitStack, fingerprints):
    from specplug.results import OrderedResults, Progress

    json_outs = [sys.stdout] if args.json else []
    if output is not None:
        json_outs.append(stack.enter_context(output.open("a" if args.resume else "w", encoding="utf-8")))
    progress = None
    if args.prompts_file and not args.quiet and sys.stderr.isatty():
        progress = Progress(total, total - len(todo))
        stack.callback(progress.close)
    return OrderedResults(llm.tokenizer, llm.config.stop, todo, llm.completion, json_outs,
                          None if args.json else sys.stdout, progress, fingerprints)


def compare_with_plain(llm, prompts, completions, seconds: float, max_new_tokens: int | None,
                       seeds=None) -> str:
    """One line: this run's tok/s against plain decoding of the same prompts on the same engine."""
    plain_llm = llm.plain()
    started = time.perf_counter()
    plain = plain_llm.generate(prompts, max_new_tokens, seeds=seeds)
    plain_seconds = time.perf_counter() - started
    tokens, plain_tokens = (sum(len(c.token_ids) for c in run) for run in (completions, plain))
    speed, plain_speed = tokens / seconds, plain_tokens / plain_seconds
    differing = [c.index for c, p in zip(completions, plain) if c.token_ids != p.token_ids]
    verdict = ("tokens identical to plain decoding" if not differing else
               f"tokens differ from plain decoding for prompt(s) {differing}: run `specplug bench` on them to "
               "see whether each is a rounding near-tie")
    return (f"[{llm.config.proposer.name} vs plain] {speed:.1f} tok/s vs {plain_speed:.1f} tok/s without "
            f"speculation ({speed / plain_speed:.2f}x on the same engine; {tokens} and {plain_tokens} tokens); "
            f"{verdict}")


def cmd_bench(args: argparse.Namespace) -> int:
    from specplug.bench import format_table, run_bench
    from specplug.config import load_config
    from specplug.prompts import read_prompts_file

    check_sizes(args)
    config = load_config(args.config, args.overrides)
    result = run_bench(config, read_prompts_file(args.prompts_file), args.max_new_tokens,
                       progress=None if args.json else sys.stderr)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if result["identical"] or not result["greedy"] else 1


if __name__ == "__main__":
    sys.exit(main())
