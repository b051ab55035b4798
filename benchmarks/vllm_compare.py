"""vLLM plain, vLLM's built-in ngram, vLLM + specplug ngram, vLLM + specplug suffix and vLLM + specplug
`auto` (ngram drafts, each row's width chosen from vLLM's measured step times), side by side in one run.

The engines stay up together in one process (an idle vLLM engine uses no CPU); each measurement runs the
same requests on each engine in turn, and rounds repeat that, so drift in the machine's speed hits all
alike. Batch 1 sends the requests one at a time; the full batch sends at least twice max_num_seqs
requests at once (the prompts file repeated), so every engine runs max_num_seqs rows at a time. Prompts files run in the order given (repetitive
first: `suffix`'s cache, which lives as long as its engine, warms up as in production). Then the
specplug ngram engine switches strategy through its config file and the worker's resident memory is
read after each, for the memory table (`--no-memory` skips it).

    .venv/bin/python benchmarks/vllm_compare.py --rounds 2 --json vllm-compare.json
    .venv/bin/python benchmarks/vllm_compare.py --rounds 1 --engines plain,specplug-ngram,specplug-suffix \
        --files repetitive,grounded,open_ended --no-memory
    .venv/bin/python benchmarks/vllm_compare.py --max-num-seqs 16 --modes full --no-memory  # a second engine set
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMPT_FILES = {name: ROOT / "benchmarks" / f"{name}.jsonl" for name in ("repetitive", "grounded", "open_ended")}
ENGINES = {"plain": "vLLM plain", "builtin-ngram": "vLLM ngram (built-in)",
           "specplug-ngram": "vLLM + specplug ngram", "specplug-suffix": "vLLM + specplug suffix",
           "specplug-auto": "vLLM + specplug auto", "specplug-none": "vLLM + specplug none"}
SPECPLUG_CONFIGS = {"specplug-ngram": ("ngram.yaml", {}), "specplug-suffix": ("suffix.yaml", {}),
                    "specplug-auto": ("ngram.yaml", {"adaptive_k": "auto"}), "specplug-none": ("none.yaml", {})}


def engines(model_dir: str, k: int, config_dir: Path, chosen: list[str], max_num_seqs: int):
    """The chosen engines; each specplug one reads its own config file (configs/ngram.yaml with k, with
    adaptive_k auto for specplug-auto, or configs/suffix.yaml), whose k is vLLM's bound for it."""
    from vllm import LLM

    common = dict(model=model_dir, dtype="float32", max_model_len=2048, max_num_seqs=max_num_seqs,
                  enforce_eager=True, disable_log_stats=False, seed=0)
    built = {}
    for name in chosen:
        if name == "plain":
            built[ENGINES[name]] = LLM(**common)
        elif name == "builtin-ngram":
            built[ENGINES[name]] = LLM(**common, speculative_config={
                "method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": 1, "prompt_lookup_max": 4})
        else:
            file, changes = SPECPLUG_CONFIGS[name]
            config = yaml.safe_load((ROOT / "configs" / file).read_text()) | changes
            if file == "ngram.yaml":
                config["num_speculative_tokens"] = k
            path = config_dir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            os.environ["SPECPLUG_CONFIG"] = str(path)  # read by the worker the engine starts now
            os.environ["SPECPLUG_STATS_FILE"] = str(config_dir / f"{name}-stats.json")  # its counters
            built[ENGINES[name]] = LLM(**common, speculative_config={
                "method": "custom_class", "model": "specplug_vllm.Proposer",
                "num_speculative_tokens": config["num_speculative_tokens"]})
    return built


def spec_counters(llm) -> tuple[float, float]:
    """vLLM's spec-decode counters. vLLM keeps one engine's metrics per process (the last started:
    the specplug one), so the other engines read no change and report no acceptance."""
    metrics = {m.name: m for m in llm.get_metrics()}
    drafted = metrics.get("vllm:spec_decode_num_draft_tokens")
    accepted = metrics.get("vllm:spec_decode_num_accepted_tokens")
    return (drafted.value if drafted else 0.0), (accepted.value if accepted else 0.0)


def timed(llm, requests: list[list[int]], batch: bool, max_tokens: int) -> tuple[float, list[list[int]]]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    prompts = [{"prompt_token_ids": ids} for ids in requests]
    start = time.perf_counter()
    if batch:
        outputs = llm.generate(prompts, params, use_tqdm=False)
    else:
        outputs = [o for p in prompts for o in llm.generate([p], params, use_tqdm=False)]
    return time.perf_counter() - start, [list(o.outputs[0].token_ids) for o in outputs]


def worker_rss_mib() -> float:
    workers = [p for p in psutil.Process().children(recursive=True) if "Worker" in p.name()]
    return max(p.memory_info().rss for p in workers) / 2**20 if workers else float("nan")


def measure(llms, requests_by_file, rounds: int, max_tokens: int, modes: list[str], max_num_seqs: int) -> list[dict]:
    totals: dict[tuple, dict] = {}
    for _ in range(rounds):
        for file, prompts in requests_by_file.items():
            full = prompts * -(-2 * max_num_seqs // len(prompts))  # at least twice the rows, all at once
            runs = {"batch1": ("batch 1", prompts, False), "full": (f"full batch ({max_num_seqs} rows)", full, True)}
            for mode, requests, batch in (runs[m] for m in modes):
                reference = None
                for label, llm in llms.items():
                    before = spec_counters(llm)
                    seconds, outputs = timed(llm, requests, batch, max_tokens)
                    after = spec_counters(llm)
                    reference = reference or outputs  # the first engine's (plain, when chosen)
                    t = totals.setdefault((file, mode, label), {"tokens": 0, "seconds": 0.0, "drafted": 0.0,
                                                                "accepted": 0.0, "differing": 0, "rates": []})
                    t["rates"].append(sum(map(len, outputs)) / seconds)
                    t["tokens"] += sum(map(len, outputs))
                    t["seconds"] += seconds
                    t["drafted"] += after[0] - before[0]
                    t["accepted"] += after[1] - before[1]
                    t["differing"] += sum(a != b for a, b in zip(reference, outputs))
    rows = []
    for (file, mode, label), t in totals.items():
        plain = totals.get((file, mode, "vLLM plain"))
        rate = t["tokens"] / t["seconds"]
        rows.append({"prompts": file, "mode": mode, "engine": label, "tokens": t["tokens"],
                     "tokens_per_second": round(rate, 2),
                     "vs_plain": round(rate / (plain["tokens"] / plain["seconds"]), 3) if plain else None,
                     "vs_plain_by_round": [round(r / p, 3) for r, p in zip(t["rates"], plain["rates"])] if plain else None,
                     "vs_plain_median": round(statistics.median(r / p for r, p in zip(t["rates"], plain["rates"])), 3)
                     if plain else None,
                     "acceptance": round(t["accepted"] / t["drafted"], 3) if t["drafted"] else None,
                     "requests_differing_from_plain": t["differing"]})
    return rows


def memory(llm, config_path: Path, strategies: dict[str, dict], prompts: list[list[int]]) -> list[dict]:
    rows = []
    for label, config in strategies.items():
        tmp = config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        os.replace(tmp, config_path)
        timed(llm, prompts[:2], True, 8)  # the next step builds the strategy
        rows.append({"strategy": label, "worker_rss_mib": round(worker_rss_mib())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("-k", type=int, default=3, help="k of built-in ngram and specplug ngram")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    parser.add_argument("--files", default=",".join(PROMPT_FILES),
                        help=f"comma-separated, in order, from {', '.join(PROMPT_FILES)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the worker memory table")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="vLLM's max_num_seqs: rows of the full batch")
    parser.add_argument("--modes", default="batch1,full", help="comma-separated: batch1, full")
    parser.add_argument("--repetitive-prompts", type=int, default=None, help="use the first N of repetitive.jsonl")
    parser.add_argument("--json", help="write the results here too (vLLM's workers log to standard output)")
    args = parser.parse_args()
    for flag, given, known in (("--files", args.files, PROMPT_FILES), ("--engines", args.engines, ENGINES)):
        unknown = sorted(set(given.split(",")) - set(known))
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("SPECPLUG_STATS_INTERVAL", "5")  # the specplug workers' counters, fresh at the end
    from specplug.bench import machine_description
    from specplug.models.loader import load_tokenizer, resolve_model
    from specplug.prompts import encode_prompt, read_prompts_file

    model_dir = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(model_dir)
    requests_by_file = {name: [encode_prompt(tokenizer, p) for p in read_prompts_file(PROMPT_FILES[name])]
                        for name in args.files.split(",")}
    if args.repetitive_prompts and "repetitive" in requests_by_file:
        requests_by_file["repetitive"] = requests_by_file["repetitive"][: args.repetitive_prompts]
    config_dir = Path(tempfile.mkdtemp())
    chosen = args.engines.split(",")
    llms = engines(str(model_dir), args.k, config_dir, chosen, args.max_num_seqs)
    rows = measure(llms, requests_by_file, args.rounds, args.max_tokens, args.modes.split(","), args.max_num_seqs)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine_description(), "k": args.k,
              "rounds": args.rounds, "max_tokens": args.max_tokens, "max_num_seqs": args.max_num_seqs, "rows": rows}
    result["specplug_stats"] = {name: json.loads((config_dir / f"{name}-stats.json").read_text())["strategies"]
                                for name in chosen if (config_dir / f"{name}-stats.json").exists()}
    if not args.no_memory and "specplug-ngram" in chosen:
        configs = {name: yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
                   for name in ("none", "ngram", "draft_model", "layerskip")}  # RSS only grows: each adds its part
        result["worker_memory"] = memory(llms[ENGINES["specplug-ngram"]], config_dir / "specplug-ngram.yaml", configs,
                                         requests_by_file.get("grounded") or next(iter(requests_by_file.values())))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
