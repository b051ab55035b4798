"""Decode steps and verify passes under three kernel plans, side by side in one process (issue 22).

The plans all come from this machine's cached kernel times (models/kernel_choice.py): the plan the
engine uses (packed copies where memory allows), the same times without copies, and the times with
oneDNN left out (the plan before it was a candidate). Shapes are rows x tokens per forward at context
400: 1 x 1 is a decode step, 1 x (k + 1) a verify pass, 8 x 4 a server step of 8 rows at k = 3.
Rounds are interleaved so the machine's noise hits every plan alike.

    .venv/bin/python benchmarks/kernel_plans.py > benchmarks/results/kernel-plans-$(date +%F).json
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from specplug.config import load_config
from specplug.llm import LLM
from specplug.models import kernel_choice
from specplug.models.costs import forward_ms
from specplug.models.loader import cache_dir

SHAPES = [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 8), (8, 1), (8, 4)]
ROUNDS = 5


def plans(model) -> dict:
    key = kernel_choice.plan_key(model.layer_matrices(), model.lm_head)
    times = json.loads(kernel_choice.plan_path(cache_dir(), key).read_text())["times"]
    without = {part: {name: t for name, t in by_name.items() if name != "onednn"} for part, by_name in times.items()}
    return {"engine's plan": model.kernels,
            "without copies": kernel_choice.choose(times["blocks"], times["head"]),
            "without oneDNN": kernel_choice.choose(without["blocks"], without["head"])}


def main() -> None:
    model = LLM(load_config(overrides=["proposer.name=none"])).model
    chosen = plans(model)
    samples = {label: {shape: [] for shape in SHAPES} for label in chosen}
    for _ in range(ROUNDS):
        for shape in SHAPES:
            for label, plan in chosen.items():
                model.use_kernels(plan)
                batch, width = shape
                samples[label][shape].append(forward_ms(model, width, context=400, repeats=10, batch=batch))
    table = {label: {f"{b}x{w}": round(statistics.median(s), 1) for (b, w), s in by_shape.items()}
             for label, by_shape in samples.items()}
    for label, row in table.items():
        print(f"{label:16} " + " ".join(f"{s}: {ms:.1f} ({ms / row['1x1']:.2f}x)" for s, ms in row.items()),
              file=sys.stderr)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpu": kernel_choice.cpu_model(),
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "plans": {label: plan.describe() for label, plan in chosen.items()},
                      "forward_ms_rows_x_tokens": table}, indent=1))


if __name__ == "__main__":
    main()
