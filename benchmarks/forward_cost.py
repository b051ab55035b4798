"""What one target forward costs by width on this CPU, and why (the two tables in docs/benchmarks.md).

1. The compact engine's forward (batch 1, context 400) for T = 1 .. 16 tokens: T = 1 is a decode step,
   T = k + 1 a verify pass. Two formulations of every linear layer, measured alternately in one run:
   the engine's (``W @ x.T`` for at most 32 rows) and ``F.linear`` everywhere.
2. The linear layers alone (every layer's fused QKV, O, gate/up and down: distinct weights, so they
   stream from memory), one model pass, by activation rows M, in three formulations.

    .venv/bin/python benchmarks/forward_cost.py
"""

from __future__ import annotations

import json
import statistics
import time

import torch
import torch.nn.functional as F

from specplug.bench import forward_ms, machine_description
from specplug.config import load_config
from specplug.models import llama as engine_model
from specplug.llm import LLM

WIDTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16]
ROWS = [1, 2, 3, 4, 5, 6, 8, 12, 16]


def forward_by_width(model) -> dict[str, list[float]]:
    default = engine_model.SKINNY_ROWS_MAX
    table: dict[str, list[float]] = {"W @ x.T for T <= 32 (engine)": [], "F.linear everywhere": []}
    for width in WIDTHS:
        for label, skinny in zip(table, (default, 0)):
            engine_model.SKINNY_ROWS_MAX = skinny  # 0: every shape takes F.linear
            try:
                table[label].append(round(forward_ms(model, width, context=400, repeats=30), 1))
            finally:
                engine_model.SKINNY_ROWS_MAX = default
    return table


@torch.inference_mode()
def linear_layers_by_rows(model, repeats: int = 10) -> dict[str, list[float]]:
    weights = [w for b in model.blocks for w in (b.qkv, b.out, b.gate_up, b.down)]
    transposed = [w.T.contiguous() for w in weights]
    formulations = {
        "F.linear(x, W)": lambda x, w, wt: F.linear(x, w),
        "(W @ x.T).T": lambda x, w, wt: (w @ x.T).T,
        "x @ W_t (W stored transposed)": lambda x, w, wt: x @ wt,
    }
    table: dict[str, list[float]] = {label: [] for label in formulations}
    for rows in ROWS:
        inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
        for label, apply in formulations.items():
            times = []
            for i in range(repeats + 2):
                start = time.perf_counter()
                for w, wt in zip(weights, transposed):
                    apply(inputs[w.shape[1]], w, wt)
                if i >= 2:
                    times.append(time.perf_counter() - start)
            table[label].append(round(statistics.median(times) * 1000, 1))
    return table


def main() -> None:
    model = LLM(load_config(overrides=["proposer.name=none"])).model
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
                      "forward_ms_by_width": {"T": WIDTHS, **forward_by_width(model)},
                      "linear_layers_ms_by_rows": {"M": ROWS, **linear_layers_by_rows(model)}}, indent=1))


if __name__ == "__main__":
    main()
