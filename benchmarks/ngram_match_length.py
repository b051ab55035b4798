"""What an ngram draft token is worth by the length of the match that proposed it, under greedy decoding.

Decodes each prompts file plainly (the embedded engine, greedy), then replays ngram over every output
position: the draft proposed there, the n of its match, and how many of its tokens the greedy output
kept. This is exactly what greedy verification would accept, without timing anything.

    .venv/bin/python benchmarks/ngram_match_length.py --prompts-file benchmarks/open_ended.jsonl \
        --prompts-file benchmarks/grounded.jsonl [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from specplug.bench import machine_description
from specplug.config import load_config
from specplug.llm import LLM
from specplug.prompts import read_prompts_file
from specplug.proposers.ngram import NgramIndex, NgramOptions


def replay(prompt: list[int], output: list[int], k: int, tried: Counter, kept: Counter) -> int:
    """Count, by (n, position in draft), the draft tokens tried and kept over ``output`` (ngram with its
    default options); returns the steps with a match."""
    defaults = NgramOptions()
    sequence, index, matched = prompt + output, NgramIndex(defaults.min_n, defaults.max_n), 0
    for t in range(len(prompt), len(sequence)):
        index.extend(sequence[:t])
        draft, n = index.lookup(k)
        matched += bool(draft)
        for j, token in enumerate(draft):
            tried[(n, j)] += 1
            if t + j >= len(sequence) or sequence[t + j] != token:
                break
            kept[(n, j)] += 1
    return matched


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts-file", action="append", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    llm = LLM(load_config("configs/none.yaml"), max_batch_size=4)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine_description(), "files": {}}
    for path in args.prompts_file:
        prompts = [llm.encode(p) for p in read_prompts_file(path)]
        outputs = [c.token_ids for c in llm.generate_ids(prompts, args.max_new_tokens)]
        tried, kept = Counter(), Counter()
        matched = sum(replay(p, o, args.k, tried, kept) for p, o in zip(prompts, outputs))
        steps = sum(len(o) for o in outputs)
        rows = [{"n": n, "position": j, "tried": tried[(n, j)], "accepted": round(kept[(n, j)] / tried[(n, j)], 3)}
                for n, j in sorted(tried)]
        result["files"][path] = {"steps": steps, "share_with_a_match": round(matched / steps, 3), "rows": rows}
        print(f"{path}: {steps} positions, {matched / steps:.0%} with a match")
        for row in rows:
            print(f"  {row['n']}-gram, draft token {row['position'] + 1}: {row['tried']:5d} tried, "
                  f"{row['accepted']:.2f} accepted")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
