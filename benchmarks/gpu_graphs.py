"""CUDA graphs against eager on a GPU: one step's time by batch and width, and `specplug bench`-style
tokens/s of plain decoding and ngram, graphs on and off, in one run. NOT RUN YET: no GPU has been
available to this project. Run with `scripts/test-gpu` (which runs this after the GPU tests).

    python benchmarks/gpu_graphs.py > benchmarks/results/gpu-graphs-$(date +%F).json
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from specplug.config import load_config
from specplug.llm import LLM
from specplug.prompts import read_prompts_file


def step_ms(llm: LLM, batch: int, width: int, context: int = 300, repeats: int = 50) -> float:
    runner = llm.engine.runner
    tokens, starts = [[0] * width for _ in range(batch)], [context] * batch
    for _ in range(3):
        runner.run(tokens, starts)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        runner.run(tokens, starts)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def tokens_per_second(llm: LLM, prompts: list[list[int]], max_new: int) -> float:
    llm.generate_ids(prompts[:1], 8)
    torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = sum(len(c.token_ids) for c in llm.generate_ids(prompts, max_new))
    torch.cuda.synchronize()
    return round(tokens / (time.perf_counter() - start), 1)


def main() -> None:
    base = ["device=cuda", "proposer.name=none"]
    runs = {"graphs": LLM(load_config(overrides=base), max_batch_size=4),
            "eager": LLM(load_config(overrides=[*base, "enforce_eager=true"]), max_batch_size=4)}
    prompts = [runs["eager"].encode(p) for p in read_prompts_file("benchmarks/grounded.jsonl")]
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "step_ms": {}, "tokens_per_second": {}}
    for label, llm in runs.items():
        result["step_ms"][label] = {f"B={b} T={t}": step_ms(llm, b, t) for b in (1, 4) for t in (1, 4)}
        for proposer in ("none", "ngram"):
            result["tokens_per_second"][f"{label} {proposer}"] = tokens_per_second(
                llm.variant(proposer, max_batch_size=1), prompts, 192)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
