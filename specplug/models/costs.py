"""What a forward costs on this machine: by width (the table a k or ``auto`` choice needs), and the
memory-bandwidth limit of plain decoding (every weight streamed once per token)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

import torch

from specplug.models.kernels import stored_bytes
from specplug.models.llama import CompactLlama, LayerPlan


@torch.inference_mode()
def forward_ms(model: CompactLlama, width: int = 1, context: int = 300, repeats: int = 20,
               plan: LayerPlan | None = None, batch: int = 1) -> float:
    """Median time (ms) of one forward of ``batch`` rows of ``width`` tokens (logits at every position)
    after ``context`` cached tokens, as a decode step (width 1) or a verify pass (width k + 1) runs it."""
    cache = model.new_cache(batch, context + width + 1)
    ids = torch.zeros((batch, width), dtype=torch.long, device=model.device)
    positions = (context + torch.arange(width, device=model.device))[None].expand(batch, -1).contiguous()
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        model(ids, positions, cache, slice(0, batch), plan=plan, upto=context + width)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def cost_by_width(model: CompactLlama, widths: Iterable[int] = range(1, 9), context: int = 300,
                  repeats: int = 10) -> dict[int, float]:
    """ms per forward of each width, measured in interleaved rounds (noise hits every width alike)."""
    widths = list(widths)
    samples: dict[int, list[float]] = {w: [] for w in widths}
    for _ in range(3):
        for w in widths:
            samples[w].append(forward_ms(model, w, context, repeats))
    return {w: round(statistics.median(s), 2) for w, s in samples.items()}


def weight_bytes(model: CompactLlama) -> int:
    """Bytes a decode step must read: every layer matrix and the LM head (norms are negligible)."""
    return stored_bytes([*(w for block in model.blocks for w in block.matrices()), model.lm_head])


@torch.inference_mode()
def stream_read_gbps(megabytes: int = 1024, repeats: int = 5) -> float:
    """Streaming read bandwidth (GB/s): the median time to sum a buffer far larger than the caches."""
    buffer = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    buffer.sum()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        times.append(time.perf_counter() - start)
    return buffer.numel() * 4 / statistics.median(times) / 1e9


def bandwidth_limit_tps(model: CompactLlama, gbps: float | None = None) -> float:
    """Plain decoding's ceiling in tokens/s: the weights cannot stream faster than memory reads."""
    return (gbps or stream_read_gbps()) * 1e9 / weight_bytes(model)
