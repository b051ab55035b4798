"""Compare proposers on one loaded target, in one run, prompt by prompt (interleaved).

For each strategy: tokens/s, acceptance a (accepted / drafted), mean accepted drafts per verify step,
the measured cost ratio c (one draft forward / one target forward, both 1 token, same context) and the
speed-up the formula (1 - a^(k+1)) / ((1 - a)(k c + 1)) predicts from them, next to the measured one.
Several prompts files run one after another in the order given, each in its own order, and are reported
apart; every strategy keeps its proposer for the whole run (so `suffix`'s cache warms up across it).

    .venv/bin/python benchmarks/compare_proposers.py --prompts-file benchmarks/grounded.jsonl \
        --strategy ngram=configs/ngram.yaml --strategy layerskip=configs/layerskip.yaml ...
    .venv/bin/python benchmarks/compare_proposers.py --prompts-file benchmarks/repetitive.jsonl \
        --prompts-file benchmarks/grounded.jsonl --prompts-file benchmarks/open_ended.jsonl \
        --strategy ngram=configs/ngram.yaml --strategy suffix=configs/suffix.yaml
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


def variant(plain: LLM, path: str) -> LLM:
    config = load_config(path)
    return plain.variant(config.proposer.name, num_speculative_tokens=config.num_speculative_tokens,
                         adaptive_k=config.adaptive_k, **config.proposer.options)


def run_file(strategies: dict[str, LLM], prompts: list[list[int]], max_new_tokens: int) -> dict:
    totals = {label: {"tokens": 0, "seconds": 0.0, "drafted": 0, "accepted": 0, "steps": 0} for label in strategies}
    outputs: dict[str, list[list[int]]] = {label: [] for label in strategies}
    for ids in prompts:
        for label, llm in strategies.items():
            start = time.perf_counter()
            tokens, stats = _engine_run(llm, ids, max_new_tokens)
            total = totals[label]
            total["seconds"] += time.perf_counter() - start
            total["tokens"] += len(tokens)
            total["drafted"] += stats["draft_tokens"]
            total["accepted"] += stats["accepted_tokens"]
            total["steps"] += stats["verify_steps"]
            outputs[label].append(tokens)
    return {"totals": totals, "outputs": outputs}


def summarise(strategies: dict[str, LLM], run: dict) -> list[dict]:
    totals, outputs = run["totals"], run["outputs"]
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
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts-file", action="append", required=True, help="repeatable: run in the order given")
    parser.add_argument("--strategy", action="append", default=[], metavar="LABEL=CONFIG")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    plain = LLM(load_config("configs/none.yaml"))
    strategies = {"none": plain}
    for item in args.strategy:
        label, path = item.split("=", 1)
        strategies[label] = variant(plain, path)
    files = {path: [plain.encode(p) for p in read_prompts_file(path)] for path in args.prompts_file}
    warm_up = next(iter(files.values()))[0][:32]
    for llm in strategies.values():
        _engine_run(llm, warm_up, 8)
    results = []
    for path, prompts in files.items():
        rows = summarise(strategies, run_file(strategies, prompts, args.max_new_tokens))
        results.append({"prompts_file": path, "prompts": len(prompts), "rows": rows})
    sources = {label: dict(llm.proposer.drafts_from) for label, llm in strategies.items()
               if hasattr(llm.proposer, "drafts_from")}  # suffix: which index each draft came from
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
                      "max_new_tokens": args.max_new_tokens, "files": results, "draft_sources": sources},
                     indent=2))


if __name__ == "__main__":
    main()
