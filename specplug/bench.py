"""``specplug bench``: the configured strategy against plain decoding and HF ``generate``, one run.

Each prompt is run by all three methods in turn (interleaved, so machine noise hits them alike),
after a short warm-up of each. Greedy outputs are compared token for token.
"""

from __future__ import annotations

import os
import time
from datetime import date
from typing import IO, Any

import torch

from specplug.config import Config
from specplug.models.costs import bandwidth_limit_tps, cost_by_width
from specplug.models.kernel_choice import cpu_model
from specplug.models.loader import load_hf_model, parse_dtype
from specplug.models.ties import first_mismatch
from specplug.llm import LLM
from specplug.prompts import Prompt

@torch.inference_mode()
def hf_generate(hf_model, prompt_ids: list[int], max_new_tokens: int, eos: list[int]) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=eos, pad_token_id=eos[0] if eos else None)
    return out[0, len(prompt_ids):].tolist()


def run_bench(config: Config, prompts: list[Prompt], max_new_tokens: int | None = None,
              progress: IO[str] | None = None) -> dict[str, Any]:
    spec = LLM(config)
    plain = spec.plain()
    hf_model = load_hf_model(spec.model_dir, parse_dtype(config.dtype))
    max_new = max_new_tokens or config.max_new_tokens
    greedy = config.sampling.greedy
    encoded = [spec.encode(p) for p in prompts]
    methods = {
        "hf_generate": lambda ids: (hf_generate(hf_model, ids, max_new, spec.eos_token_ids), None),
        "plain": lambda ids: _engine_run(plain, ids, max_new),
        config.proposer.name: lambda ids: _engine_run(spec, ids, max_new),
    }
    for run in methods.values():  # warm-up
        run(encoded[0][:64])
    machine = {"kernels": spec.model.kernels.describe(),
               "forward_ms_by_width": cost_by_width(spec.model, range(1, config.num_speculative_tokens + 2)),
               "bandwidth_limit_tps": round(bandwidth_limit_tps(spec.model), 1)}
    totals = {name: {"tokens": 0, "seconds": 0.0, "draft_tokens": 0, "accepted_tokens": 0, "steps": 0}
              for name in methods}
    per_prompt = []
    for index, ids in enumerate(encoded):
        outputs = {}
        for name, run in methods.items():
            start = time.perf_counter()
            tokens, stats = run(ids)
            seconds = time.perf_counter() - start
            outputs[name] = tokens
            total = totals[name]
            total["tokens"] += len(tokens)
            total["seconds"] += seconds
            if stats:
                total["draft_tokens"] += stats["draft_tokens"]
                total["accepted_tokens"] += stats["accepted_tokens"]
                total["steps"] += stats["verify_steps"]
        mismatches = {name: first_mismatch(hf_model, ids, outputs["plain"], out)
                      for name, out in outputs.items() if name != "plain"} if greedy else {}
        per_prompt.append({"index": index, "prompt_tokens": len(ids),
                           "generated": {n: len(o) for n, o in outputs.items()},
                           "mismatches": {n: m for n, m in mismatches.items() if m}})
        if progress:
            print(f"prompt {index + 1}/{len(encoded)} done", file=progress, flush=True)
    return {**_summarise(config, totals, per_prompt, greedy, max_new), **machine}


def machine_description() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def measure(llm: LLM, prompts: list[list[int]], max_new_tokens: int) -> dict[str, float]:
    """Run each prompt alone through ``llm``: tokens/s over all of them, and acceptance figures."""
    tokens = drafted = accepted = steps = 0
    seconds = 0.0
    for ids in prompts:
        start = time.perf_counter()
        out, stats = _engine_run(llm, ids, max_new_tokens)
        seconds += time.perf_counter() - start
        tokens += len(out)
        drafted, accepted = drafted + stats["draft_tokens"], accepted + stats["accepted_tokens"]
        steps += stats["verify_steps"]
    return {"tokens_per_second": tokens / seconds, "acceptance_rate": accepted / drafted if drafted else 0.0,
            "mean_accepted_per_step": accepted / steps if steps else 0.0}


def _engine_run(llm: LLM, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], dict[str, Any]]:
    completion = llm.generate_ids([prompt_ids], max_new_tokens)[0]
    return completion.token_ids, completion.stats


def _summarise(config: Config, totals: dict, per_prompt: list, greedy: bool, max_new: int) -> dict[str, Any]:
    hf_tps = totals["hf_generate"]["tokens"] / totals["hf_generate"]["seconds"]
    rows = []
    for name, t in totals.items():
        tps = t["tokens"] / t["seconds"]
        rows.append({
            "method": name, "tokens": t["tokens"], "seconds": round(t["seconds"], 3),
            "tokens_per_second": round(tps, 2), "speedup_vs_hf": round(tps / hf_tps, 3),
            "speedup_vs_plain": round(tps * totals["plain"]["seconds"] / totals["plain"]["tokens"], 3),
            "acceptance_rate": round(t["accepted_tokens"] / t["draft_tokens"], 3) if t["draft_tokens"] else None,
            "mean_accepted_per_step": round(t["accepted_tokens"] / t["steps"], 3) if t["steps"] else None,
        })
    unexplained = [m for p in per_prompt for m in p["mismatches"].values() if not m["near_tie"]]
    return {
        "date": date.today().isoformat(),
        "machine": machine_description(),
        "torch": torch.__version__, "model": config.model, "dtype": config.dtype,
        "proposer": config.proposer.name, "proposer_options": config.proposer.options,
        "num_speculative_tokens": config.num_speculative_tokens, "max_new_tokens": max_new,
        "prompts": len(per_prompt), "greedy": greedy, "identical": not unexplained,
        "results": rows, "per_prompt": per_prompt,
    }


def format_table(result: dict[str, Any]) -> str:
    costs = result["forward_ms_by_width"]
    step = next(iter(costs.values()))  # T = 1
    lines = [f"{result['date']}  {result['machine']}  torch {result['torch']}  model {result['model']} "
             f"({result['dtype']})  k={result['num_speculative_tokens']}  prompts={result['prompts']}  "
             f"max_new_tokens={result['max_new_tokens']}",
             f"kernels: {result['kernels']}",
             "forward ms by width (x a decode step): " + ", ".join(
                 f"T={w}: {ms:.1f} ({ms / step:.2f}x)" for w, ms in costs.items())
             + f"; memory-bandwidth limit of plain decoding: {result['bandwidth_limit_tps']:.1f} tok/s",
             f"{'method':<14} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'vs HF':>6} {'vs plain':>8} "
             f"{'accept':>7} {'acc/step':>8}"]
    for r in result["results"]:
        acc = f"{r['acceptance_rate']:.0%}" if r["acceptance_rate"] is not None else "-"
        per = f"{r['mean_accepted_per_step']:.2f}" if r["mean_accepted_per_step"] is not None else "-"
        lines.append(f"{r['method']:<14} {r['tokens']:>7} {r['seconds']:>8.2f} {r['tokens_per_second']:>7.1f} "
                     f"{r['speedup_vs_hf']:>5.2f}x {r['speedup_vs_plain']:>7.2f}x {acc:>7} {per:>8}")
    if not result["greedy"]:
        lines.append("outputs: not compared (sampling; the statistical tests cover losslessness)")
    else:
        near = sum(1 for p in result["per_prompt"] for m in p["mismatches"].values() if m["near_tie"])
        lines.append("outputs: identical token ids across methods" if result["identical"] and not near else
                     f"outputs: identical except {near} near-tie divergence(s) (top-2 gap within rounding, "
                     f"{result['dtype']})"
                     if result["identical"] else "outputs: DIFFER beyond a near tie (see --json): a bug")
    return "\n".join(lines)
