"""Compare proposers on one loaded target, in one run, prompt by prompt (interleaved).

For each strategy: tokens/s, acceptance a (accepted / drafted), mean accepted drafts per verify step,
the measured cost ratio c (one draft forward / one target forward, both 1 token, same context) and the
speed-up the formula (1 - a^(k+1)) / ((1 - a)(k c + 1)) predicts from them, next to the measured one.

    .venv/bin/python benchmarks/compare_proposers.py --prompts-file benchmarks/grounded.jsonl \
        --strategy ngram=configs/ngram.yaml --strategy layerskip=configs/layerskip.yaml ...
"""

from __future__ import annotations

import argparse
import json
import time

from specplug.bench import _engine_run, machine_description
from specplug.models.costs import forward_ms
from specplug.config import load_config
from specplug.llm import LLM
from specplug.prompts import read_prompts_file


def cost_ratio(llm: LLM) -> float | None:
    drafter = getattr(llm.proposer, "model", None)
    if drafter is None:
        return None
    return forward_ms(drafter, plan=llm.proposer.plan) / forward_ms(llm.model)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts-file", required=True)
    parser.add_argument("--strategy", action="append", default=[], metavar="LABEL=CONFIG")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    plain = LLM(load_config("configs/none.yaml"))
    strategies = {"none": plain}
    for item in args.strategy:
        label, path = item.split("=", 1)
        config = load_config(path)
        strategies[label] = plain.variant(config.proposer.name, num_speculative_tokens=config.num_speculative_tokens,
                                          **config.proposer.options)
    prompts = [plain.encode(p) for p in read_prompts_file(args.prompts_file)]
    for llm in strategies.values():  # warm-up
        _engine_run(llm, prompts[0][:32], 8)
    totals = {label: {"tokens": 0, "seconds": 0.0, "drafted": 0, "accepted": 0, "steps": 0} for label in strategies}
    outputs: dict[str, list[list[int]]] = {label: [] for label in strategies}
    for ids in prompts:
        for label, llm in strategies.items():
            start = time.perf_counter()
            tokens, stats = _engine_run(llm, ids, args.max_new_tokens)
            total = totals[label]
            total["seconds"] += time.perf_counter() - start
            total["tokens"] += len(tokens)
            total["drafted"] += stats["draft_tokens"]
            total["accepted"] += stats["accepted_tokens"]
            total["steps"] += stats["verify_steps"]
            outputs[label].append(tokens)
    base = totals["none"]["tokens"] / totals["none"]["seconds"]
    rows = []
    for label, llm in strategies.items():
        t = totals[label]
        a = t["accepted"] / t["drafted"] if t["drafted"] else None
        c = cost_ratio(llm)
        k = llm.config.num_speculative_tokens
        predicted = (1 - a ** (k + 1)) / ((1 - a) * (k * c + 1)) if a is not None and c is not None and a < 1 else None
        differing = sum(ref != out for ref, out in zip(outputs["none"], outputs[label]))
        rows.append({"strategy": label, "k": k if label != "none" else None, "tokens": t["tokens"],
                     "tokens_per_second": round(t["tokens"] / t["seconds"], 2),
                     "speedup_vs_plain": round(t["tokens"] / t["seconds"] / base, 3),
                     "acceptance": None if a is None else round(a, 3),
                     "accepted_per_step": round(t["accepted"] / t["steps"], 3) if t["drafted"] else None,
                     "c": None if c is None else round(c, 3),
                     "predicted_speedup": None if predicted is None else round(predicted, 3),
                     "prompts_differing_from_plain": differing})
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
                      "prompts_file": args.prompts_file, "max_new_tokens": args.max_new_tokens, "rows": rows},
                     indent=2))


if __name__ == "__main__":
    main()
