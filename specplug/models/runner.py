"""Graph-ready forward steps: shapes from a small fixed set, static input buffers, no host reads.

A decode step (T = 1), a verify pass (T = k + 1) and a model drafter's step all go through a
``StepRunner``. It pads the batch and the width up to the next bucket, copies the host-side token ids
and positions into static buffers kept per bucket, and takes the attended cache extent from the host's
lengths, so nothing inside the step reads a device tensor back. On CUDA (unless ``enforce_eager``)
each bucket's forward is captured once as a CUDA graph and replayed; where capture fails the runner
says so once and stays eager. On a CPU the buckets are exact (padding would only add work there),
unless the steps are compiled (``torch.compile``, one graph per bucket, the attended extent left
dynamic); tests run padded buckets on the CPU to prove them token-identical.

Padding rows live in free cache slots (live rows are packed at the front) and padding positions lie
past each row's valid length, both overwritten before they are ever read.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from specplug.models.kernel_choice import cpu_model, key_digest
from specplug.models.kv_cache import StaticKVCache
from specplug.models.llama import CompactLlama, LayerPlan
from specplug.models.loader import cache_dir


def compiled_code_dir() -> Path:
    """Where inductor keeps what it compiled (FX graphs, AOT autograd, C++ kernels) for this machine:
    under specplug's cache, one directory per CPU model, torch version and thread count, so a second
    start compiles nothing again and another CPU or torch never reuses the code."""
    key = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    return cache_dir() / "compiled" / key_digest(key)


def keep_compiled_code() -> None:
    """Point inductor's caches at ``compiled_code_dir()`` (a TORCHINDUCTOR_CACHE_DIR of the user's wins).

    inductor skips a cache entry it cannot read and compiles it again, logging a traceback per entry;
    that becomes one warning."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compiled_code_dir()))
    codecache = logging.getLogger("torch._inductor.codecache")
    if not any(isinstance(f, _UnreadableEntries) for f in codecache.filters):
        codecache.addFilter(_UnreadableEntries())


class _UnreadableEntries(logging.Filter):
    """Drops inductor's tracebacks for cache entries it could not read, saying so once instead."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None:
            return True
        if not self.said:
            self.said = True
            warnings.warn(f"a compiled-code cache entry under {os.environ.get('TORCHINDUCTOR_CACHE_DIR')} could not "
                          "be read (corrupt or from another version); it is compiled again")
        return False


def buckets(largest: int, padded: bool) -> tuple[int, ...]:
    """Sizes up to ``largest``: every size (exact) or powers of two (padded), ending at or past it."""
    if not padded:
        return tuple(range(1, largest + 1))
    sizes = [1]
    while sizes[-1] < largest:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


def bucket_for(size: int, sizes: tuple[int, ...]) -> int | None:
    return next((b for b in sizes if b >= size), None)


@dataclass
class StaticStep:
    """One bucket's buffers: the step copies its inputs in; a captured graph reads them from there."""

    input_ids: torch.Tensor  # [Bb, Tb] long
    positions: torch.Tensor  # [Bb, Tb] long
    last: torch.Tensor | None  # [Bb, 1] long: the one position whose logits are wanted; None = all
    layers: tuple[int, ...] = ()  # the layers whose input features the step also returns
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None  # [Bb, Tb or 1, V] float32, the graph's output
    features: dict[int, torch.Tensor] | None = None  # {layer: [Bb, Tb, hidden]}, the graph's output


class StepRunner:
    def __init__(self, model: CompactLlama, cache: StaticKVCache, batch_sizes: tuple[int, ...],
                 widths: tuple[int, ...], plan: LayerPlan | None = None, graphs: bool = False,
                 compiled: bool = False):
        if batch_sizes[-1] > cache.slots:
            raise ValueError(f"batch bucket {batch_sizes[-1]} needs that many cache slots; cache has {cache.slots}")
        self.model, self.cache, self.plan = model, cache, plan
        self.batch_sizes, self.widths = batch_sizes, widths
        self.graphs = graphs and model.device.type == "cuda"
        self.static: dict[tuple[int, int, bool, tuple[int, ...]], StaticStep] = {}
        # {layer: [B, T, hidden]}: the features the last ``run`` was asked for (``layers``), else empty
        self.features: dict[int, torch.Tensor] = {}
        self.forward = model.forward_features
        if compiled:
            import torch._dynamo

            keep_compiled_code()
            # one graph per bucket (and gather mode); the attended extent is a dynamic size
            shapes = 2 * len(batch_sizes) * len(widths)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, shapes)
            self.forward = torch.compile(model.forward_features, dynamic=True)

    @classmethod
    def create(cls, model: CompactLlama, max_batch: int, max_width: int, max_len: int,
               plan: LayerPlan | None = None, enforce_eager: bool = False,
               padded: bool | None = None, compiled: bool = False) -> "StepRunner":
        """A runner with a cache of its own for ``max_batch`` rows of ``max_len`` tokens, fed up to
        ``max_width`` tokens a step. Buckets are padded where graphs are captured (CUDA, not
        ``enforce_eager``) or compiled, exact otherwise; ``padded`` forces one or the other. The cache
        gets the spare slots and positions that padding writes to."""
        graphs = model.device.type == "cuda" and not enforce_eager
        padded = (graphs or compiled) if padded is None else padded
        batch_sizes, widths = buckets(max_batch, padded), buckets(max_width, padded)
        cache = model.new_cache(batch_sizes[-1], max_len + widths[-1] - 1)
        return cls(model, cache, batch_sizes, widths, plan, graphs, compiled)

    @torch.inference_mode()
    def run(self, tokens: list[list[int]], starts: list[int], last: list[int] | None = None,
            layers: tuple[int, ...] = ()) -> torch.Tensor:
        """Feed ``tokens[i]`` to cache slot i at positions ``starts[i]`` on (rows right-padded).

        Returns float32 logits [B, T, V], T = the longest row, or [B, 1, V] at position ``last[i]`` of
        each row when ``last`` is given; the input features of ``layers`` ([B, T, hidden] each) are left in
        ``self.features``. Shapes past the largest bucket (a drafter's first catch-up over a whole prompt)
        run eagerly as they are, in buffers that are not kept and never compiled.
        """
        batch, width = len(tokens), max(map(len, tokens))
        padded_batch, padded_width = bucket_for(batch, self.batch_sizes), bucket_for(width, self.widths)
        if padded_batch is None or padded_width is None:
            step = self._new_step(batch, width, last is not None, layers)
            self._fill(step, tokens, starts, last)
            logits, features = self._forward(step, min(max(starts) + width, self.cache.max_len),
                                             self.model.forward_features)
        else:
            step = self._static(padded_batch, padded_width, last is not None, layers)
            if self.graphs and step.graph is None:
                self._capture(step)
            self._fill(step, tokens, starts, last)
            if step.graph is not None:
                step.graph.replay()
                logits, features = step.logits, step.features
            else:
                logits, features = self._forward(step, min(max(starts) + padded_width, self.cache.max_len))
        self.features = {layer: f[:batch, :width] for layer, f in features.items()}
        return logits[:batch] if last is not None else logits[:batch, :width]

    def _static(self, batch: int, width: int, gather: bool, layers: tuple[int, ...]) -> StaticStep:
        key = (batch, width, gather, layers)
        if key not in self.static:
            self.static[key] = self._new_step(batch, width, gather, layers)
        return self.static[key]

    def _new_step(self, batch: int, width: int, gather: bool, layers: tuple[int, ...]) -> StaticStep:
        device = self.model.device
        return StaticStep(torch.zeros((batch, width), dtype=torch.long, device=device),
                          torch.zeros((batch, width), dtype=torch.long, device=device),
                          torch.zeros((batch, 1), dtype=torch.long, device=device) if gather else None, layers)

    def _fill(self, step: StaticStep, tokens: list[list[int]], starts: list[int], last: list[int] | None) -> None:
        padded_batch, padded_width = step.input_ids.shape
        ids = torch.zeros((padded_batch, padded_width), dtype=torch.long)
        for i, row in enumerate(tokens):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        row_starts = torch.zeros(padded_batch, dtype=torch.long)
        row_starts[: len(starts)] = torch.tensor(starts, dtype=torch.long)
        positions = (row_starts[:, None] + torch.arange(padded_width)).clamp(max=self.cache.max_len - 1)
        step.input_ids.copy_(ids, non_blocking=True)
        step.positions.copy_(positions, non_blocking=True)
        if last is not None:
            step.last.copy_(torch.tensor(last + [0] * (padded_batch - len(last)))[:, None], non_blocking=True)

    def _forward(self, step: StaticStep, upto: int, forward=None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        rows = slice(0, step.input_ids.shape[0])
        return (forward or self.forward)(step.input_ids, step.positions, self.cache, rows, step.layers, step.last,
                                         self.plan, upto)

    def _capture(self, step: StaticStep) -> None:
        """Record the bucket's forward as a CUDA graph over the whole cache extent (static shapes).

        Warm-up and capture write K/V at the cache's last positions, which hold no valid entry."""
        tail = self.cache.max_len - step.positions.shape[1]
        step.positions.copy_(tail + torch.arange(step.positions.shape[1], device=step.positions.device))
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward(step, self.cache.max_len)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step.logits, step.features = self._forward(step, self.cache.max_len)
            step.graph = graph
        except RuntimeError as exc:  # capture unsupported here: eager from now on, said once
            warnings.warn(f"CUDA graph capture failed ({str(exc).splitlines()[0]}); running eagerly")
            self.graphs = False
