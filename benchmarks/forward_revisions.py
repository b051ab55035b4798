"""The compact forward of an earlier revision against the working tree's, side by side in one process.

Both run the same weights under the same kernel plan (this machine's), so what differs is only the
code of the forward itself: the operations eager mode dispatches per layer. Reports ms per forward
(median of interleaved rounds) and aten operations per forward, at context 400, for rows x tokens
shapes (1 x 1 a decode step, 1 x (k + 1) a verify pass, 8 x 4 a server step), and checks that both
give the same logits.

    .venv/bin/python benchmarks/forward_revisions.py ac599f7 > benchmarks/results/forward-revisions-$(date +%F).json
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from specplug.config import load_config
from specplug.llm import LLM
from specplug.models import kernel_choice
from specplug.models.costs import forward_ms

SHAPES = [(1, 1), (1, 2), (1, 4), (1, 8), (8, 1), (8, 4)]
ROUNDS = 5


def model_of_revision(revision: str, current):
    """The CompactLlama class of ``revision``, built over ``current``'s weights and kernel plan."""
    source = subprocess.run(["git", "show", f"{revision}:specplug/models/llama.py"], capture_output=True, text=True,
                            check=True).stdout
    path = Path(tempfile.mkdtemp()) / "llama_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("llama_then", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    then = module.CompactLlama(current.shape, current.blocks, current.embed, current.norm, current.lm_head,
                               torch.ones(current.shape.head_dim // 2), 1.0)
    then.rope = current.rope  # the same (cos, sin) table in both revisions
    then.kernels, then._block_kernels = current.kernels, current._block_kernels
    then._head_kernels, then._head_packed = current._head_kernels, current._head_packed
    return then


@torch.inference_mode()
def operations_per_forward(model, batch: int, width: int) -> int:
    cache = model.new_cache(batch, 400 + width + 1)
    ids = torch.zeros((batch, width), dtype=torch.long)
    positions = (400 + torch.arange(width))[None].expand(batch, -1).contiguous()
    model(ids, positions, cache, slice(0, batch), upto=400 + width)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        model(ids, positions, cache, slice(0, batch), upto=400 + width)
    return sum(event.count for event in trace.key_averages())


@torch.inference_mode()
def same_logits(a, b) -> bool:
    ids, positions = torch.randint(0, 1000, (1, 24)), torch.arange(24)[None]
    return torch.equal(a(ids, positions, a.new_cache(1, 32), slice(0, 1)), b(ids, positions, b.new_cache(1, 32), slice(0, 1)))


def main() -> None:
    revision = sys.argv[1]
    now = LLM(load_config(overrides=["proposer.name=none"])).model
    models = {revision: model_of_revision(revision, now), "working tree": now}
    samples = {label: {shape: [] for shape in SHAPES} for label in models}
    for _ in range(ROUNDS):
        for batch, width in SHAPES:
            for label, model in models.items():
                samples[label][(batch, width)].append(forward_ms(model, width, context=400, repeats=10, batch=batch))
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "cpu": kernel_choice.cpu_model(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "kernels": now.kernels.describe(),
        "identical_fp32_logits": same_logits(*models.values()),
        "forward_ms_rows_x_tokens": {label: {f"{b}x{w}": round(statistics.median(s), 1) for (b, w), s in by.items()}
                                     for label, by in samples.items()},
        "aten_operations_per_forward": {label: {f"{b}x{w}": operations_per_forward(model, b, w) for b, w in SHAPES}
                                        for label, model in models.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
