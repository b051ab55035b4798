"""Where an eagle3 step's time goes, against a plain step, on one loaded target (one process, one run).

Times, per call: the target's forward by verify width (``StepRunner.run``), the whole proposer call
(``propose``), and inside it the head's forwards (``_forward``: catch-up and chained draft steps) and its
picks (``_pick``: argmax and confidence; a sampled row's logits spread over the target's vocabulary), and
each of the head's matrix products (``Eagle3Head._linear`` by weight; ``fc`` runs outside the forward). Reports
medians in ms and each part as a share of a plain decode step, so the cost of a k = 1 step reads
directly: (verify at width 2 + the proposer call) / plain step.

    .venv/bin/python benchmarks/eagle3_step_parts.py [--config configs/eagle3.yaml] [--prompts 4] [--max-new-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from specplug.bench import machine_description
from specplug.config import load_config
from specplug.llm import LLM
from specplug.models.eagle3 import Eagle3Head
from specplug.models.runner import StepRunner
from specplug.proposers.eagle3_drafter import Eagle3Drafter
from specplug.prompts import read_prompts_file

sys.path.insert(0, str(Path(__file__).parent))
from compare_proposers import variant  # noqa: E402

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(cls: type, name: str, label: Callable[..., str]) -> None:
    """Wrap ``cls.name`` so that each call's wall time is recorded under ``label(*args)``."""
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            TIMES[label(self, *args)].append(time.perf_counter() - start)

    setattr(cls, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/eagle3.yaml")
    parser.add_argument("--prompts-file", default="benchmarks/open_ended_heldout.jsonl")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    plain = LLM(load_config("configs/none.yaml"))
    head = variant(plain, args.config)
    prompts = [plain.encode(p) for p in read_prompts_file(args.prompts_file)][: args.prompts]
    for llm in (plain, head):  # warm-up: first forwards of each width
        llm.generate_ids([prompts[0][:32]], 8)
    timed(StepRunner, "run", lambda self, tokens, *_: f"target forward, width {max(map(len, tokens))}")
    timed(Eagle3Drafter, "propose", lambda self, *_: "proposer call")
    timed(Eagle3Drafter, "_forward", lambda self, rows, chunks, *_: f"head forward, {max(map(len, chunks))} wide")
    timed(Eagle3Drafter, "_pick", lambda self, *_: "head pick")
    timed(Eagle3Head, "_linear", lambda self, x, name: f"head product {name}, {x.numel() // x.shape[-1]} rows")
    for ids in prompts:  # interleaved, prompt by prompt
        for llm in (plain, head):
            llm.generate_ids([ids], args.max_new_tokens)
    decode = statistics.median(TIMES["target forward, width 1"])
    parts = {label: {"calls": len(t), "median_ms": round(1000 * statistics.median(t), 3),
                     "of_a_decode_step": round(statistics.median(t) / decode, 3)}
             for label, t in sorted(TIMES.items())}
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine_description(), "config": args.config,
                      "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "parts": parts}, indent=2))


if __name__ == "__main__":
    main()
