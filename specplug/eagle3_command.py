"""``specplug make-eagle3``: make the data, train an EAGLE-3 head, report held-out acceptance, write it.

The target's greedy answers to a prompts file (the user's traffic), to user messages the target writes
itself (the default) or to a built-in set of templated chat prompts are decoded by the embedded engine in
batches, with the features the head drafts from; a share of the prompts is held out. Prompts, data and
training resume after an interruption (all are kept under specplug's cache, keyed by the target, the
layers and the prompts).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from specplug.arguments import add_config_args
from specplug.config import Config, PluginChoice
from specplug.eagle3_data import generate
from specplug.eagle3_prompts import self_written, templated
from specplug.eagle3_train import acceptance, draft_vocabulary, new_head, train
from specplug.errors import SpecplugError
from specplug.llm import LLM
from specplug.models.eagle3 import HeadShape
from specplug.models.kernel_choice import cpu_model, key_digest
from specplug.models.loader import cache_dir, load_hf_model
from specplug.prompts import Prompt
from specplug.proposers import none

DEFAULT_TOKENS = 200_000  # answer tokens the target generates
DEFAULT_ANSWER_TOKENS = 192  # per prompt
DEFAULT_DRAFT_VOCAB = 4096  # lost nothing against the full 49k vocabulary in the pilot
DEFAULT_EPOCHS = 3.0
DEFAULT_TEST_STEPS = 3  # training-time-test depth: drafts of up to this many tokens are trained
HELD_OUT_EVERY = 20  # every 20th prompt is held out
PROMPT_SOURCES = ("self", "templated")  # without --prompts-file: self-written user messages, or templates


def make_eagle3(config: Config, out: Path, prompts: list[Prompt] | None = None, tokens: int = DEFAULT_TOKENS,
                answer_tokens: int = DEFAULT_ANSWER_TOKENS, draft_vocab: int = DEFAULT_DRAFT_VOCAB,
                epochs: float = DEFAULT_EPOCHS, test_steps: int = DEFAULT_TEST_STEPS, rows: int = 32,
                prompt_source: str = "self", log=sys.stderr) -> dict:
    """Train a head for ``config.model`` into ``out``; returns what its config.json records of the training."""
    if tokens < 1 or answer_tokens < 1 or draft_vocab < 2 or epochs <= 0 or test_steps < 1:
        raise SpecplugError("--tokens, --answer-tokens and --epochs must be positive, --draft-vocab >= 2 and "
                            "--test-steps >= 1")
    llm = LLM(dataclasses.replace(config, proposer=PluginChoice(none.NAME)))  # the head is what is being made
    source = "file" if prompts else prompt_source
    began = time.perf_counter()
    prompts = prompts or built_in_prompts(llm, prompt_source, tokens, answer_tokens, rows, log)
    prompt_seconds = time.perf_counter() - began
    hf_target = load_hf_model(llm.model_dir, torch.float32)
    shape = HeadShape.for_target(hf_target.config, min(draft_vocab, llm.model.shape.vocab_size))
    work = work_dir(llm.model_dir, shape.layers, answer_tokens, prompts, source)
    began = time.perf_counter()
    samples = generate(llm.model, llm.tokenizer, llm.eos_token_ids, prompts, shape.layers, answer_tokens,
                       tokens, work / "shards", rows, log)
    data_seconds = time.perf_counter() - began
    trained_on, held = split(samples)
    head = new_head(hf_target, shape, draft_vocabulary(trained_on, shape.draft_vocab_size, shape.vocab_size))
    embed = hf_target.model.embed_tokens.weight.detach()
    del hf_target
    before = acceptance(head, embed, held, test_steps)
    run = key_digest({"prompts": len(trained_on), "epochs": epochs, "steps": test_steps, "vocab": draft_vocab})
    result = train(head, embed, trained_on, epochs, test_steps, work / f"train-{run}.pt", log=log)
    after = acceptance(head, embed, held, test_steps)
    info = {"target_model": config.model, "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
            "prompts": len(samples), "train_answer_tokens": sum(s.answer_tokens for s in trained_on),
            "held_out_prompts": len(held), "held_out_answer_tokens": sum(s.answer_tokens for s in held),
            "prompt_source": source, "prompt_seconds": round(prompt_seconds, 1),
            "data_seconds": round(data_seconds, 1), "epochs": epochs, "test_steps": test_steps,
            "held_out_acceptance_before": [round(a, 4) for a in before],
            "held_out_acceptance": [round(a, 4) for a in after], **result}
    head.save(out, training=info)
    return info


def work_dir(model_dir: Path, layers: tuple[int, ...], answer_tokens: int, prompts: list[Prompt],
             source: str) -> Path:
    """Where a run's data shards and training checkpoints are kept. Self-written prompts are one sequence
    (seeds 0, 1, ...) whatever the budget, so a larger run reuses a smaller one's shards."""
    key = {"target": str(model_dir.resolve()), "layers": layers, "answer_tokens": answer_tokens,
           "prompts": source if source == "self" else key_digest({"prompts": prompts})}
    return cache_dir() / "eagle3" / key_digest(key)


def split(samples: list) -> tuple[list, list]:
    """(trained on, held out): every HELD_OUT_EVERY-th sample is held out."""
    held = [s for i, s in enumerate(samples) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return [s for i, s in enumerate(samples) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1], held


def built_in_prompts(llm: LLM, source: str, tokens: int, answer_tokens: int, rows: int, log) -> list[Prompt]:
    """Prompts enough for ``tokens`` answer tokens (answers taken to fill two thirds of their length on average:
    the templated ones filled 0.89)."""
    if source == "templated":
        return templated()
    count = -(-tokens * 3 // max(1, 2 * answer_tokens))
    path = cache_dir() / "eagle3" / f"self-written-{key_digest({'target': str(llm.model_dir.resolve())})}.jsonl"
    return self_written(llm.model, llm.tokenizer, llm.eos_token_ids, count, path, rows, log)


def configure(parser) -> None:
    """``specplug make-eagle3``'s arguments."""
    add_config_args(parser, max_new_tokens=False)
    parser.add_argument("--out", required=True, help="directory to write the head to (vLLM's EAGLE-3 layout)")
    parser.add_argument("--prompts-file", help="JSONL prompts to answer (your traffic; default: --prompt-source)")
    parser.add_argument("--prompt-source", choices=PROMPT_SOURCES, default="self",
                        help="without --prompts-file: user messages the target writes itself (self, the default) "
                             f"or {len(templated())} templated chat prompts")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                        help="answer tokens the target generates in all (default %(default)s)")
    parser.add_argument("--answer-tokens", type=int, default=DEFAULT_ANSWER_TOKENS,
                        help="most tokens per answer (default %(default)s)")
    parser.add_argument("--draft-vocab", type=int, default=DEFAULT_DRAFT_VOCAB,
                        help="tokens the head can draft, the most frequent in the answers (default %(default)s)")
    parser.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS,
                        help="passes over the data (default %(default)s)")
    parser.add_argument("--test-steps", type=int, default=DEFAULT_TEST_STEPS,
                        help="training-time-test depth (default %(default)s)")


def run_command(args) -> int:
    from specplug.config import load_config
    from specplug.prompts import read_prompts_file

    config = load_config(args.config, args.overrides)
    if config.threads:
        torch.set_num_threads(config.threads)
    prompts = read_prompts_file(args.prompts_file) if args.prompts_file else None
    info = make_eagle3(config, Path(args.out), prompts, args.tokens, args.answer_tokens, args.draft_vocab, args.epochs,
                       args.test_steps, prompt_source=args.prompt_source)
    accepted = ", ".join(f"{a:.2f}" for a in info["held_out_acceptance"])
    print(f"EAGLE-3 head written to {args.out}: {info['train_answer_tokens']} training tokens, held-out acceptance "
          f"by position {accepted} (before training: "
          f"{', '.join(f'{a:.2f}' for a in info['held_out_acceptance_before'])})")
    print(json.dumps(info), file=sys.stderr)
    return 0

