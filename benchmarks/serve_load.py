"""Bounded load test of `specplug serve` on localhost: concurrent streaming clients, a fixed number of
requests, a mixed workload (benchmarks/grounded.jsonl and open_ended.jsonl, cycled), greedy.

For each strategy (none, ngram, auto) and concurrency (1, 8, 32) it reports errors, p50/p99 time to
first token, p50/p99 inter-token latency (a request's time per output token after its first) and total
throughput; and checks every stream token for token against the same prompt run alone (concurrency 1,
no speculation). A difference counts as a near tie when the two chosen tokens' log-probabilities differ
by less than 1e-3 at the first differing position (batch shape can flip an fp32 tie; nothing else may).

    .venv/bin/python benchmarks/serve_load.py [--max-new-tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

HERE = Path(__file__).parent
STRATEGIES = ("none", "ngram", "auto")
CONCURRENCY = (1, 8, 32)


def prompts(tokenizer_dir: str | None = None) -> list:
    items = []
    for name in ("grounded.jsonl", "open_ended.jsonl"):
        for line in (HERE / name).read_text().splitlines():
            if line.strip():
                items.append(json.loads(line))
    grounded, open_ended = items[:5], items[5:]
    mixed = [p for pair in zip(grounded, open_ended) for p in pair] + grounded[len(open_ended):]
    return mixed


def as_text(item: dict, tokenizer) -> str:
    if "prompt" in item:
        return item["prompt"]
    return tokenizer.apply_chat_template(item["messages"], tokenize=False, add_generation_prompt=True)


async def one(client: httpx.AsyncClient, text: str, strategy: str, max_new: int) -> dict:
    body = {"inputs": text, "parameters": {"max_new_tokens": max_new, "details": True, "strategy": strategy}}
    start = time.perf_counter()
    tokens, logprobs, first, error = [], [], None, None
    try:
        async with client.stream("POST", "/generate_stream", json=body, timeout=600) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    error = event["error"]
                    break
                first = first or time.perf_counter()
                tokens.append(event["token"]["id"])
                logprobs.append(event["token"]["logprob"])
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    if error:
        return {"error": error}
    return {"tokens": tokens, "logprobs": logprobs, "ttft": first - start,
            "itl": (end - first) / max(len(tokens) - 1, 1), "start": start, "end": end}


def lengths(requests: int, max_new: int, spread: int = 0) -> list[int]:
    """Each request's max_new_tokens: ``max_new`` give or take ``spread``, spread evenly over the requests,
    so that closed-loop streams do not finish, and send again, in lockstep."""
    return [max_new - spread + (i * 37) % (2 * spread + 1) for i in range(requests)]


async def load(base: str, texts: list[str], strategy: str, concurrency: int, max_new: list[int]):
    """Request i (prompt ``i % len(texts)``, ``max_new[i]`` tokens) for every i, from ``concurrency``
    clients; every result and the run's wall time."""
    requests = len(max_new)
    queue = list(range(requests))
    results: dict[int, dict] = {}

    async def client_loop(client):
        while queue:
            i = queue.pop(0)
            results[i] = await one(client, texts[i % len(texts)], strategy, max_new[i])

    async with httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return [results[i] for i in range(requests)], wall


def compare(tokens: list[int], logprobs: list[float], ref_tokens: list[int], ref_logprobs: list[float]) -> str:
    """identical, near_tie or MISMATCH against the reference run alone."""
    for j, (a, b) in enumerate(zip(tokens, ref_tokens)):
        if a != b:
            return "near_tie" if abs(logprobs[j] - ref_logprobs[j]) < 1e-3 else "MISMATCH"
    return "identical" if len(tokens) == len(ref_tokens) else "MISMATCH"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summarise(results: list[dict], wall: float, texts: list[str], reference: dict[int, dict],
              max_new: list[int]) -> dict:
    ok = [r for r in results if "error" not in r]
    checks = [compare(r["tokens"], r["logprobs"], reference[i % len(texts)]["tokens"][: max_new[i]],
                      reference[i % len(texts)]["logprobs"][: max_new[i]])
              for i, r in enumerate(results) if "error" not in r]
    tokens = sum(len(r["tokens"]) for r in ok)
    return {
        "requests": len(results), "errors": len(results) - len(ok),
        "identical": checks.count("identical"), "near_tie": checks.count("near_tie"),
        "mismatch": checks.count("MISMATCH"),
        "ttft_p50_ms": round(1000 * percentile([r["ttft"] for r in ok], 0.5), 1),
        "ttft_p99_ms": round(1000 * percentile([r["ttft"] for r in ok], 0.99), 1),
        "itl_p50_ms": round(1000 * percentile([r["itl"] for r in ok], 0.5), 1),
        "itl_p99_ms": round(1000 * percentile([r["itl"] for r in ok], 0.99), 1),
        "tokens": tokens, "wall_s": round(wall, 2), "throughput_tps": round(tokens / wall, 1),
    }


def start_server(config: dict, port: int) -> subprocess.Popen:
    path = Path(tempfile.mkdtemp()) / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "specplug.cli", "serve", "--config", str(path), "--port",
                             str(port)], stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start: " + proc.stdout.read())


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--repeats", type=int, default=1, help="run every concurrency level this many times, "
                        "strategies interleaved, to tell noise from a real gap")
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends in "
                        "turn (at least one per prompt in all): more makes the drain at a run's end a smaller share")
    parser.add_argument("--length-spread", type=int, default=0, help="vary each request's max_new_tokens by up "
                        "to this many tokens either way (0: all alike, so closed-loop streams run in lockstep)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if not 0 <= args.length_spread < args.max_new_tokens:
        parser.error(f"--length-spread {args.length_spread}: give 0 up to --max-new-tokens - 1 "
                     f"({args.max_new_tokens - 1}), so every request asks for at least one token")
    levels = [int(c) for c in args.concurrency.split(",")]
    from transformers import AutoTokenizer

    from specplug.models.loader import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    texts = [as_text(p, tokenizer) for p in prompts()]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"proposer": {"name": "ngram", "min_n": 1, "max_n": 4}, "num_speculative_tokens": 3,
              "adaptive_k": True, "max_model_len": 1024,
              "serve": {"max_batch_size": max(levels), "strategies": {"none": {"proposer": "none"}}}}
    proc = start_server(config, port)
    base = f"http://127.0.0.1:{port}"
    try:
        for strategy in STRATEGIES:  # warm-up: first forwards of each width, auto's first measurements
            asyncio.run(load(base, texts, strategy, 4, lengths(8, 16)))
        reference_runs, _ = asyncio.run(load(base, texts, "none", 1,
                                             lengths(len(texts), args.max_new_tokens + args.length_spread)))
        reference = dict(enumerate(reference_runs))
        table = []
        for repeat in range(args.repeats):
            for concurrency in levels:
                requests = max(len(texts), args.requests_per_client * concurrency)
                max_new = lengths(requests, args.max_new_tokens, args.length_spread)
                for strategy in STRATEGIES:
                    results, wall = asyncio.run(load(base, texts, strategy, concurrency, max_new))
                    row = {"strategy": strategy, "concurrency": concurrency, "repeat": repeat,
                           **summarise(results, wall, texts, reference, max_new)}
                    table.append(row)
                    print(json.dumps(row), flush=True)
        metrics = httpx.get(base + "/metrics").text
        auto_k = [line for line in metrics.splitlines() if line.startswith("specplug:auto_draft_tokens_chosen")]
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    report = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "max_new_tokens": args.max_new_tokens,
              "length_spread": args.length_spread,
              "threads": os.cpu_count(), "rows": table, "auto_chosen_k": auto_k}
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    for c, repeat in ((c, r) for r in range(args.repeats) for c in levels):
        rows = [r for r in table if r["concurrency"] == c and r["repeat"] == repeat]
        plain = next(r for r in rows if r["strategy"] == "none")["throughput_tps"]
        for r in rows:
            print(f"[{repeat}] c={c:<3} {r['strategy']:<6} {r['throughput_tps']:>7.1f} tok/s "
                  f"({r['throughput_tps'] / plain:.2f}x)  ttft p50/p99 {r['ttft_p50_ms']}/{r['ttft_p99_ms']} ms  "
                  f"itl p50/p99 {r['itl_p50_ms']}/{r['itl_p99_ms']} ms  errors {r['errors']}  identical "
                  f"{r['identical']} near-tie {r['near_tie']} mismatch {r['mismatch']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
