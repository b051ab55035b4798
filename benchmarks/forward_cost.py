"""What one target forward costs by width on this CPU, per linear-kernel plan, and the physical limit.

1. The compact engine's forward (batch 1, context 400) for T = 1 .. 16 tokens (T = 1 a decode step,
   T = k + 1 a verify pass) under each plan: the one measured for this machine (``linear_kernel:
   auto``) and each forced setting. Plans are measured alternately, width by width, in one run.
2. The linear layers alone (every layer's fused QKV, O, gate/up and down: distinct weights, so they
   stream from memory), one model pass, by activation rows M, per formulation: the very timings the
   ``auto`` choice is made from (specplug/models/kernels.py: measure).
3. Streaming read bandwidth, the bytes a decode step reads, and so the tokens/s ceiling of plain decoding.

    .venv/bin/python benchmarks/forward_cost.py > benchmarks/results/forward-cost-$(date +%F).json
"""

from __future__ import annotations

import json
import time

from specplug.bench import machine_description
from specplug.config import LINEAR_KERNELS, load_config
from specplug.llm import LLM
from specplug.models import kernel_choice, kernels
from specplug.models.costs import bandwidth_limit_tps, forward_ms, stream_read_gbps, weight_bytes
from specplug.models.kernels import ROW_BUCKETS, KernelPlan

WIDTHS = [1, 2, 3, 4, 5, 6, 8, 12, 16]


def forward_by_width(model, plans: dict[str, KernelPlan]) -> dict[str, list[float]]:
    table: dict[str, list[float]] = {label: [] for label in plans}
    for width in WIDTHS:
        for label, plan in plans.items():
            model.use_kernels(plan)
            table[label].append(round(forward_ms(model, width, context=400, repeats=20), 1))
    return table


def main() -> None:
    model = LLM(load_config(overrides=["proposer.name=none"])).model
    measured = model.kernels
    can_run = kernels.available(model.dtype, model.device)
    plans = {f"auto ({measured.source})": measured,
             **{setting: KernelPlan.uniform(setting, "forced") for setting in LINEAR_KERNELS[1:] if setting in can_run}}
    by_width = forward_by_width(model, plans)
    model.use_kernels(KernelPlan.uniform("linear", "forced"))
    by_rows = kernel_choice.measure(model.layer_matrices(), can_run, rounds=5)
    gbps = stream_read_gbps()
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": machine_description(),
        "kernels": measured.describe(),
        "forward_ms_by_width": {"T": WIDTHS, **by_width},
        "linear_layers_ms_by_rows": {"M": list(ROW_BUCKETS),
                                     **{name: [None if t is None else round(t * 1000, 1) for t in times]
                                        for name, times in by_rows.items()}},
        "stream_read_gb_per_s": round(gbps, 1), "weight_mb_per_token": round(weight_bytes(model) / 1e6, 1),
        "plain_decoding_limit_tok_per_s": round(bandwidth_limit_tps(model, gbps), 1),
    }, indent=1))


if __name__ == "__main__":
    main()
