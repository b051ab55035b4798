"""Which matrix-product formulation each linear layer uses: measured on this machine, not assumed.

For an activation x [M, in] and a weight W [out, in], BLAS libraries pick very different kernels for
the same product depending on how it is written and on M. Measured on two CPUs of one machine type
(docs/benchmarks.md): on an AMD EPYC (AVX2) ``(W @ x.T).T`` streams the weights 3x faster than
``F.linear`` for M = 2-4, while on an Intel Xeon (AVX-512, AMX) the same form is 2x slower. So the
engine times the candidates once per machine (CPU model, torch version, threads, dtype, shapes), keeps
the fastest per row bucket, and caches the choice on disk. ``F.linear`` stays wherever no candidate is
measurably faster, and wherever timing is impossible (non-CPU devices, errors).
The candidates and the plan are in kernels.py; the times and the plan are cached per machine.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from specplug.errors import SpecplugError
from specplug.models.kernels import FORMULATIONS, LARGE, ROW_BUCKETS, KernelPlan, available, lay_out, stored_bytes
from specplug.models.kv_cache import available_bytes

MARGIN = 0.05  # a candidate replaces F.linear only when measured at least this much faster (noise)
COPY_PAYS_UPTO = 8  # a packed copy is kept only if it speeds up a row count up to this one
COPY_SHARE = 0.25  # of the memory available at load time that a packed copy of the layer weights may take
PLAN_VERSION = 5  # bump when candidates or the measuring method change: old cache files are ignored


# ---- measuring ----------------------------------------------------------------------------------
def _time_pass(name: str, weights: Sequence[torch.Tensor], inputs: dict[int, torch.Tensor]) -> float:
    layout, apply = FORMULATIONS[name]
    in_dim = 0 if layout == "cols" else 1
    start = time.perf_counter()
    for w in weights:
        apply(inputs[w.shape[in_dim]], w)
    return time.perf_counter() - start


@torch.inference_mode()
def measure(weights: Sequence[torch.Tensor], candidates: Sequence[str], rounds: int = 3,
            buckets: Sequence[int] = ROW_BUCKETS) -> dict[str, list[float | None]]:
    """Median seconds of one pass over ``weights`` (rows layout, [out, in]) per candidate and bucket.

    Every weight is used once per pass, so they stream from memory as in a real forward. Candidates
    are interleaved round by round, so machine noise hits them alike. None: not a candidate there.
    """
    stored = {layout: [lay_out(w, layout) for w in weights] for layout in {FORMULATIONS[c][0] for c in candidates}}
    results: dict[str, list[float | None]] = {c: [] for c in candidates}
    dtype, device = weights[0].dtype, weights[0].device
    for m in buckets:
        inputs = {n: torch.randn(m, n, dtype=dtype, device=device) for n in {w.shape[1] for w in weights}}
        here = [c for c in candidates if c != "w_x_pad" or m == 1]
        samples: dict[str, list[float]] = {c: [] for c in here}
        for round_ in range(rounds + 1):
            for c in here:
                seconds = _time_pass(c, stored[FORMULATIONS[c][0]], inputs)
                if round_:  # the first round warms up
                    samples[c].append(seconds)
        for c in candidates:
            results[c].append(statistics.median(samples[c]) if c in samples else None)
    return results


def _best(times: dict[str, list[float | None]], layout: str, bucket: int) -> tuple[str, float]:
    """The fastest formulation of ``layout`` in ``bucket`` that beats the layout's base by MARGIN."""
    base = LARGE[layout]
    name, seconds = base, times[base][bucket]
    for c, per_bucket in times.items():
        t = per_bucket[bucket]
        if FORMULATIONS[c][0] == layout and t is not None and t < seconds * (1 - MARGIN):
            name, seconds = c, t
    return name, seconds


def _with_a_copy(times: dict[str, list[float | None]], single: tuple[str, ...]) -> tuple[str, ...] | None:
    """Per bucket the rows formulation or, where it is faster by MARGIN, oneDNN on a packed copy; None
    unless that beats ``single`` by MARGIN at some row count up to COPY_PAYS_UPTO (never slower anywhere)."""
    if "onednn" not in times:
        return None
    names = []
    for b in range(len(ROW_BUCKETS)):
        name, seconds = _best(times, "rows", b)
        names.append("onednn" if times["onednn"][b] < seconds * (1 - MARGIN) else name)
    gains = any(times[n][b] < times[o][b] * (1 - MARGIN)
                for b, (n, o, size) in enumerate(zip(names, single, ROW_BUCKETS)) if size <= COPY_PAYS_UPTO)
    return tuple(names) if gains else None


def choose(block_times: dict[str, list[float | None]], head_times: dict[str, list[float | None]],
           source: str = "measured", copies: dict[str, float] | None = None) -> KernelPlan:
    """The plan from measured times: per bucket the fastest formulation that beats ``linear`` by MARGIN.

    Another layout (cols, packed) is taken only if it is faster over all buckets together than the
    layout chosen so far and never slower than ``linear`` (beyond MARGIN) in any bucket: weights can
    be stored only one way, except that packed copies (``copies``: MB of the ``blocks`` and ``head``
    copies memory allows) may serve the rows layout where oneDNN is fastest (``_with_a_copy``).
    """
    buckets = range(len(ROW_BUCKETS))
    layout, total = "rows", sum(_best(block_times, "rows", b)[1] for b in buckets)
    for other in ("cols", "packed"):
        if LARGE[other] not in block_times:
            continue
        times = [_best(block_times, other, b)[1] for b in buckets]
        never_worse = all(t <= block_times["linear"][b] * (1 + MARGIN) for b, t in zip(buckets, times))
        if never_worse and sum(times) < total * (1 - MARGIN):
            layout, total = other, sum(times)
    blocks = tuple(_best(block_times, layout, b)[0] for b in buckets)
    head = tuple(_best(head_times, "rows", b)[0] for b in buckets)
    copies, copy_mb = copies or {}, 0.0
    if copies.get("blocks") and (mixed := _with_a_copy(block_times, blocks)):
        layout, blocks, copy_mb = "rows", mixed, copies["blocks"]
    if copies.get("head") and (mixed := _with_a_copy(head_times, head)):
        head, copy_mb = mixed, copy_mb + copies["head"]
    return KernelPlan(layout, blocks, head, source, copy_mb)


# ---- choosing, with a cache on disk -------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def plan_key(block_weights: Sequence[torch.Tensor], head: torch.Tensor) -> dict:
    """What a measured plan depends on: the machine, torch, threads, dtype and the weights' shapes."""
    return {"version": PLAN_VERSION, "cpu": cpu_model(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "dtype": str(head.dtype),
            "shapes": sorted({tuple(w.shape) for w in block_weights}), "head": list(head.shape)}


def key_digest(key: dict) -> str:
    """A short name for a cache entry that depends on ``key`` (kernel plans, compiled code)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def plan_path(cache_dir: Path, key: dict) -> Path:
    return cache_dir / "kernels" / f"{key_digest(key)}.json"


def select(setting: str, block_weights: Sequence[torch.Tensor], head: torch.Tensor,
           cache_dir: Path | None) -> KernelPlan:
    """The plan for ``setting`` (auto: measured once per machine, then read from ``cache_dir``)."""
    can_run = available(head.dtype, head.device)
    if setting != "auto":
        if setting not in can_run:
            raise SpecplugError(f"linear_kernel: {setting} cannot run for {str(head.dtype).removeprefix('torch.')} "
                                f"weights on {head.device.type} (oneDNN packing takes float32 or bfloat16 on a "
                                "CPU build with oneDNN); use linear_kernel: auto")
        return KernelPlan.uniform(setting, "forced")
    if head.device.type != "cpu":
        return KernelPlan.uniform("linear", "default")
    key = plan_key(block_weights, head)
    path = plan_path(cache_dir, key) if cache_dir is not None else None
    copies = _copy_allowance(block_weights, head)
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == json.loads(json.dumps(key)):
                return choose(saved["times"]["blocks"], saved["times"]["head"], "cached", copies)
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unreadable: measure again and overwrite
    try:
        print("specplug: timing the linear-layer kernels for this CPU (once; cached)", file=sys.stderr, flush=True)
        times = {"blocks": measure(block_weights, can_run),
                 "head": measure([head], tuple(n for n in can_run if FORMULATIONS[n][0] in ("rows", "packed")))}
    except RuntimeError as exc:
        warnings.warn(f"could not time the linear kernels ({exc}); using F.linear everywhere")
        return KernelPlan.uniform("linear", "fallback")
    plan = choose(times["blocks"], times["head"], "measured", copies)
    if path is not None:
        _save(path, key, times, plan)
    return plan


def _copy_allowance(block_weights: Sequence[torch.Tensor], head: torch.Tensor) -> dict[str, float]:
    """MB of packed copies of the layer weights and of the head, if together they fit in COPY_SHARE of
    the memory available (else none)."""
    sizes = {"blocks": stored_bytes(block_weights), "head": stored_bytes([head])}
    free = available_bytes(head.device)
    fits = free is not None and sum(sizes.values()) <= COPY_SHARE * free
    return {part: size / 1e6 for part, size in sizes.items()} if fits else {}


def _save(path: Path, key: dict, times: dict, plan: KernelPlan) -> None:
    """The measured times (the plan is chosen from them at each load, as memory allows) and, for
    people reading the file, the plan chosen now."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({"key": key, "times": times, "plan": asdict(plan)}, indent=1))
        partial.replace(path)
    except OSError as exc:
        warnings.warn(f"could not cache the kernel choice at {path} ({exc}); it will be measured again")
