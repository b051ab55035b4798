"""`specplug generate` over a large prompts file: when the first result arrives, the total time, the peak
memory of the process, and that every result came back once, in input order.

    .venv/bin/python benchmarks/large_file.py [--prompts 2000] [--batch-size 16] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS = ["the sea", "a city at night", "autumn", "an old clock", "the first snow", "a train journey", "bees",
          "a lighthouse", "bread", "the moon"]


def write_prompts(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            f.write(json.dumps({"prompt": f"Note {i}: a short sentence about {TOPICS[i % len(TOPICS)]}:"}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--config", default="configs/ngram.yaml")
    args = parser.parse_args()
    prompts = Path(tempfile.mkdtemp()) / "prompts.jsonl"
    write_prompts(prompts, args.prompts)
    command = [sys.executable, "-m", "specplug.cli", "generate", "--config", args.config, "--prompts-file",
               str(prompts), "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
               "--json", "--quiet"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    first, indices, tokens = None, [], 0
    for line in proc.stdout:
        first = first or time.perf_counter() - started
        row = json.loads(line)
        indices.append(row["index"])
        tokens += len(row["token_ids"])
    proc.wait()
    total = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"prompts": args.prompts, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                      "exit": proc.returncode, "in_order": indices == list(range(args.prompts)),
                      "first_result_s": round(first or 0, 1), "total_s": round(total, 1), "tokens": tokens,
                      "tokens_per_s": round(tokens / total, 1), "peak_rss_mb": round(peak_mb)}))


if __name__ == "__main__":
    main()
