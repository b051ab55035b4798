"""`auto` with and without its margin against plain decoding, in one embedded engine at a full batch.

One `LLM` (SmolLM2-135M, ngram with k = 3, `max_batch_size` rows) runs the same closed batch of
requests (serve_load's mixed grounded and open-ended prompts, cycled) under three strategies in turn,
rounds interleaved: `none`, `auto` with its default margin and `auto` with none. For each it reports
the run's tokens per second, the tokens per second of its steps at a full batch only (the drain at a
closed run's end left out), and what each full-batch step verified: rows x width, steps, ms per step,
accepted draft tokens per row. No HTTP: what the policy chooses, measured without a server's noise.

    .venv/bin/python benchmarks/auto_margin.py [--rounds 4] [--rows 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from serve_load import as_text, cpu_model, prompts

from specplug.config import load_config
from specplug.config.checks import PluginChoice
from specplug.hosting.drafting import Drafting
from specplug.llm import LLM

K = 3
NGRAM = PluginChoice("ngram", {"min_n": 1, "max_n": 4})
STEPS: list[tuple[int, int, float, int]] = []  # (rows, width, seconds, accepted) of each verify step


def record_steps() -> None:
    observe = Drafting.observe

    def recorded(self, rows, drafts, accepted, batch_size, width, target_seconds, propose_seconds, tokens=None):
        STEPS.append((batch_size, width, target_seconds + propose_seconds, sum(accepted)))
        return observe(self, rows, drafts, accepted, batch_size, width, target_seconds, propose_seconds, tokens)

    Drafting.observe = recorded


def strategies(llm: LLM) -> dict:
    none = llm.make_strategy("none", PluginChoice("none"), K, False)
    auto = llm.make_strategy("auto", NGRAM, K, "auto")
    no_margin = llm.make_strategy("auto", NGRAM, K, "auto")
    no_margin.policy.margin = 0.0
    return {"none": none, f"auto (margin {auto.policy.margin:.2f})": auto, "auto (margin 0)": no_margin}


def run(llm: LLM, strategy, requests: list[list[int]], max_new: int, rows: int) -> dict:
    llm.engine.strategy = strategy
    STEPS.clear()
    started = time.perf_counter()
    tokens = sum(len(c.token_ids) for c in llm.generate_ids(requests, max_new))
    wall = time.perf_counter() - started
    full = [s for s in STEPS if s[0] == rows]
    by_width = defaultdict(list)
    for step in full:
        by_width[step[1]].append(step)
    full_seconds = sum(s for _, _, s, _ in full) or float("nan")  # a warm-up never fills the batch
    return {"tps": tokens / wall, "full_tps": sum(b + a for b, _, _, a in full) / full_seconds,
            "steps_below_quarter": sum(s[0] < rows // 4 for s in STEPS),
            "full_steps": {w: {"steps": len(v), "ms": 1000 * sum(s[2] for s in v) / len(v),
                               "accepted_per_row": sum(s[3] for s in v) / (rows * len(v))}
                           for w, v in sorted(by_width.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    llm = LLM(load_config(overrides=[f"num_speculative_tokens={K}", "max_model_len=1024"]), max_batch_size=args.rows)
    record_steps()
    texts = [as_text(p, llm.tokenizer) for p in prompts()]
    requests = [llm.encode(texts[i % len(texts)]) for i in range(2 * args.rows)]
    table = strategies(llm)
    for strategy in table.values():  # warm-up: first forwards of each width, auto's first measurements
        run(llm, strategy, requests[:8], 16, args.rows)
    results = defaultdict(list)
    for r in range(args.rounds):
        for name, strategy in table.items():
            results[name].append(run(llm, strategy, requests, args.max_new_tokens, args.rows))
            last = results[name][-1]
            print(f"[{r}] {name:<18} {last['tps']:6.1f} tok/s, full batch {last['full_tps']:6.1f}  "
                  + "  ".join(f"w{w}: {v['steps']} x {v['ms']:.0f} ms, {v['accepted_per_row']:.2f}"
                              for w, v in last["full_steps"].items()), flush=True)
    plain = results["none"]
    for name, runs in results.items():
        ratio = sum(x["tps"] for x in runs) / sum(x["tps"] for x in plain)
        full = sum(x["full_tps"] for x in runs) / sum(x["full_tps"] for x in plain)
        print(f"{name:<18} vs none: {ratio:.3f} (run), {full:.3f} (full-batch steps); by round "
              + " ".join(f"{x['tps'] / p['tps']:.3f}" for x, p in zip(runs, plain)))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
                                               "rows": args.rows, "results": results}, indent=1))


if __name__ == "__main__":
    main()
