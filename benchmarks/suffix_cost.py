"""What the ``suffix`` proposer costs on the CPU, through the proposer alone (no model).

1. Time per propose call (one row, budget 8) with the global cache holding 10^3 .. 10^6 tokens, for rows
   that repeat cached outputs (long matches, full drafts) and rows of unseen tokens, next to the draft
   length found (the cost should follow the match and draft, not the cache size); ngram on the same rows.
2. Bytes per cached token (tracemalloc: everything the cache allocates, tokens included) and per token
   of a row's own index.
3. The cache bound over a long run: 10^4 requests through propose/release with a bounded cache, its
   tokens, requests, nodes and the process's resident memory every 1000 requests; release time.

Token streams: the project's own docs and sources tokenized with the model's tokenizer, cut into
256-token "outputs"; beyond its length the text is reused with 10% of the tokens replaced at random
(so that repeats are not exact), and a second stream of uniform random tokens (no structure at all).

    .venv/bin/python benchmarks/suffix_cost.py > benchmarks/results/suffix-cost-2026-11-23.json
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import tracemalloc
from array import array
from pathlib import Path

import psutil

from specplug.metadata import DraftRequest
from specplug.proposers.ngram import NgramProposer
from specplug.proposers.suffix import SuffixOptions, SuffixProposer
from specplug.proposers.suffix_automaton import SuffixAutomaton

ROOT = Path(__file__).resolve().parents[1]
VOCAB, CHUNK, K = 49152, 256, 8


def project_tokens() -> list[int]:
    from specplug.models.loader import load_tokenizer, resolve_model

    files = sorted(ROOT.glob("docs/*.md")) + sorted(ROOT.glob("specplug/**/*.py"))
    return load_tokenizer(resolve_model("smollm2-135m")).encode("".join(f.read_text() for f in files))


def outputs(corpus: list[int], rng: random.Random, kind: str):
    """Endless 256-token outputs: the corpus in order (10% of tokens replaced after the first pass), or random."""
    start, passes = 0, 0
    while True:
        if kind == "random":
            yield [rng.randrange(VOCAB) for _ in range(CHUNK)]
            continue
        chunk = corpus[start : start + CHUNK]
        if passes:
            chunk = [rng.randrange(VOCAB) if rng.random() < 0.1 else t for t in chunk]
        yield chunk
        start += CHUNK
        if start + CHUNK > len(corpus):
            start, passes = rng.randrange(CHUNK), passes + 1


def filled(size: int, stream) -> SuffixProposer:
    proposer = SuffixProposer(SuffixOptions(max_cached_tokens=size), K)
    while proposer.cache.num_tokens + CHUNK <= size:
        proposer.cache.add(array("i", next(stream)))
    return proposer


def time_steps(proposer, rows: list[list[int]], rng: random.Random) -> dict:
    """Each row decodes 120 tokens, 1-4 at a time (as accepted tokens arrive), proposing at each step.
    The first call, which indexes the row's first 128 tokens (its prompt, as at prefill), is not timed."""
    times, drafts = [], []
    for i, row in enumerate(rows):
        proposer.propose([DraftRequest(("t", i), row[:127], 64, K)])
        n = 128
        while n < len(row):
            request = DraftRequest(("t", i), row[:n], 64, K)
            started = time.perf_counter()
            draft = proposer.propose([request])[0]
            times.append(time.perf_counter() - started)
            drafts.append(len(draft.token_ids))
            n += rng.randrange(1, 5)
        getattr(proposer, "rows", {}).pop(("t", i), None)  # dropped, not released: the cache stays as measured
    ordered = sorted(times)
    return {"steps": len(times), "mean_us": round(statistics.fmean(times) * 1e6, 1),
            "median_us": round(ordered[len(ordered) // 2] * 1e6, 1),
            "p99_us": round(ordered[int(len(ordered) * 0.99)] * 1e6, 1),
            "mean_draft_tokens": round(statistics.fmean(drafts), 2)}


def cost_by_cache_size(corpus: list[int], sizes: list[int]) -> list[dict]:
    """Rows that repeat cached outputs (long matches, full drafts) and rows of unseen random tokens."""
    results = []
    for kind in ("text", "random"):
        for size in sizes:
            proposer = filled(size, outputs(corpus, random.Random(2), kind))
            rng, cached = random.Random(1), list(proposer.cache.tree.seqs.values())
            rows = {"repeats_cached": [[rng.randrange(VOCAB) for _ in range(64)] + list(rng.choice(cached))[:184]
                                       for _ in range(20)],
                    "unseen": [[rng.randrange(VOCAB) for _ in range(248)] for _ in range(20)]}
            for label, row_set in rows.items():
                suffix = time_steps(proposer, row_set, random.Random(3))
                ngram = time_steps(NgramProposer(1, 4), row_set, random.Random(3))
                results.append({"stream": kind, "rows": label, "cache_tokens": proposer.cache.num_tokens,
                                "suffix": suffix, "ngram_mean_us": ngram["mean_us"]})
                print(json.dumps(results[-1]), flush=True)
    return results


def bytes_per_token(corpus: list[int], size: int) -> dict:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    proposer = filled(size, outputs(corpus, random.Random(2), "text"))
    gc.collect()
    cache_bytes = tracemalloc.get_traced_memory()[0] - before
    automaton, row = SuffixAutomaton(32 + K), corpus[:2000]
    before = tracemalloc.get_traced_memory()[0]
    for token in row:
        automaton.extend(token)
    row_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    tokens = proposer.cache.num_tokens
    return {"cache_tokens": tokens, "cache_bytes_per_token": round(cache_bytes / tokens, 1),
            "tree_nodes_per_token": round(proposer.cache.tree.nodes / tokens, 3),
            "row_index_bytes_per_token": round(row_bytes / len(row), 1)}


def long_run(corpus: list[int], requests: int, max_tokens: int) -> dict:
    """``requests`` requests through propose/release with a bounded cache; snapshots every 1000."""
    rng, stream = random.Random(4), outputs(corpus, random.Random(5), "text")
    proposer = SuffixProposer(SuffixOptions(max_cached_tokens=max_tokens), K)
    snapshots, release_times = [], []
    for i in range(requests):
        prompt, output = [rng.randrange(VOCAB) for _ in range(32)], next(stream)[: rng.randrange(32, CHUNK)]
        for n in range(0, len(output), 16):
            proposer.propose([DraftRequest(i, prompt + output[:n + 1], len(prompt), K)])
        started = time.perf_counter()
        proposer.release(i)
        release_times.append(time.perf_counter() - started)
        if (i + 1) % 1000 == 0:
            gc.collect()
            snapshots.append({"requests_served": i + 1, "cache_tokens": proposer.cache.num_tokens,
                              "cache_requests": proposer.cache.num_requests, "tree_nodes": proposer.cache.tree.nodes,
                              "rows_held": len(proposer.rows),
                              "process_rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1)})
            print(json.dumps(snapshots[-1]), flush=True)
    release_times.sort()
    return {"max_cached_tokens": max_tokens, "requests": requests, "snapshots": snapshots,
            "release_ms_median": round(release_times[len(release_times) // 2] * 1e3, 2),
            "release_ms_p99": round(release_times[int(len(release_times) * 0.99)] * 1e3, 2),
            "bound_held": all(s["cache_tokens"] <= max_tokens for s in snapshots)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--long-run-tokens", type=int, default=100_000)
    args = parser.parse_args()
    from specplug.bench import machine_description

    corpus = project_tokens()
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine_description(), "corpus_tokens": len(corpus),
              "k": K, "max_depth": 32}
    result["cost_by_cache_size"] = cost_by_cache_size(corpus, [int(s) for s in args.sizes.split(",")])
    result["memory"] = bytes_per_token(corpus, 200_000)
    result["long_run"] = long_run(corpus, args.requests, args.long_run_tokens)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
