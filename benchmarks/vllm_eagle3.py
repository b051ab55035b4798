"""vLLM plain against vLLM's own eagle3 method with specplug's head (the checkpoint configs/eagle3.yaml
names, flags from ``specplug_vllm.flags``), greedy, one request at a time, prompts interleaved, in one run,
reported per prompts file.

    .venv/bin/python benchmarks/vllm_eagle3.py --prompts-file benchmarks/open_ended_heldout.jsonl > out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "configs" / "eagle3.yaml"))
    parser.add_argument("--prompts-file", action="append", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default wants most of the RAM
    from vllm import LLM, SamplingParams

    from specplug.bench import machine_description
    from specplug.config import load_config
    from specplug.models.loader import resolve_model
    from specplug.prompts import read_prompts_file
    from specplug_vllm.flags import speculative_config

    config = load_config(args.config)
    model_dir = str(resolve_model(config.model))
    common = dict(model=model_dir, dtype="float32", max_model_len=2048, max_num_seqs=1, enforce_eager=True, seed=0)
    speculative = speculative_config(config)
    engines = {"vLLM plain": LLM(**common), "vLLM eagle3 (specplug head)": LLM(**common, speculative_config=speculative)}
    tokenizer = next(iter(engines.values())).get_tokenizer()
    files = {path: [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                    for p in read_prompts_file(path)] for path in args.prompts_file}
    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens)
    for llm in engines.values():
        llm.generate(next(iter(files.values()))[:1], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    report = {path: interleaved(engines, prompts, params) for path, prompts in files.items()}
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine_description(), "speculative_config":
                      speculative, "max_new_tokens": args.max_new_tokens,
                      "files": [{"prompts_file": path, "prompts": len(files[path]), "rows": rows}
                                for path, rows in report.items()]}, indent=2))


def interleaved(engines: dict, prompts: list[str], params) -> list[dict]:
    """Each engine on each prompt in turn: tok/s, against the first engine (plain), and prompts differing from it."""
    totals = {name: {"tokens": 0, "seconds": 0.0} for name in engines}
    outputs: dict[str, list[list[int]]] = {name: [] for name in engines}
    for prompt in prompts:
        for name, llm in engines.items():
            start = time.perf_counter()
            out = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
            totals[name]["seconds"] += time.perf_counter() - start
            totals[name]["tokens"] += len(out.token_ids)
            outputs[name].append(list(out.token_ids))
    plain_name = next(iter(engines))
    plain, base = outputs[plain_name], totals[plain_name]["tokens"] / totals[plain_name]["seconds"]
    return [{"engine": name, "tokens": t["tokens"], "tokens_per_second": round(t["tokens"] / t["seconds"], 2),
             "speedup_vs_plain": round(t["tokens"] / t["seconds"] / base, 3),
             "prompts_differing_from_plain": sum(a != b for a, b in zip(plain, outputs[name]))}
            for name, t in totals.items()]

if __name__ == "__main__":
    main()
