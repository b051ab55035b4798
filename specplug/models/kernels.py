"""Which matrix-product formulation each linear layer uses: measured on this machine, not assumed.

For an activation x [M, in] and a weight W [out, in], BLAS libraries pick very different kernels for
the same product depending on how it is written and on M. Measured on two CPUs of one machine type
(docs/benchmarks.md): on an AMD EPYC (AVX2) ``(W @ x.T).T`` streams the weights 3x faster than
``F.linear`` for M = 2-4, while on an Intel Xeon (AVX-512, AMX) the same form is 2x slower. So the
engine times the candidates once per machine (CPU model, torch version, threads, dtype, shapes), keeps
the fastest per row bucket, and caches the choice on disk. ``F.linear`` stays wherever no candidate is
measurably faster, and wherever timing is impossible (non-CPU devices, errors).

Formulations (``layout`` says how the decoder layers' weights are stored):
  linear     F.linear(x, W)              rows layout: W [out, in]
  w_x        (W @ x.T).T                 rows layout
  w_x_pad    one row padded to two, w_x  rows layout, M = 1 only
  halves     W's two halves in one bmm   rows layout (two threads stream one half each)
  x_wt       x @ Wt                      cols layout: Wt = W.T stored contiguous [in, out]
  wt_x       (Wt.T @ x.T).T              cols layout
  onednn     oneDNN's prepacked linear   packed layout: W reordered once into oneDNN's blocked format
The LM head (often tied to the embedding) always keeps the rows layout. Every layout holds one copy
of the weights (a packed weight replaces its rows form), so no plan costs memory beyond the model.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from specplug.errors import SpecplugError

ROW_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32)  # M measured; between buckets the next one up rules
MARGIN = 0.05  # a candidate replaces F.linear only when measured at least this much faster (noise)
PACK_ROWS = 4  # the row count oneDNN's packed layout is ordered for (one pack serves every M)
PLAN_VERSION = 4  # bump when candidates or the measuring method change: old cache files are ignored


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w)


def _w_x(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w @ x.T).T.contiguous()


def _w_x_pad(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w @ torch.cat([x, x]).T).T[:1].contiguous()


def _halves(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if w.shape[0] % 2:
        return _w_x(x, w)
    halves = torch.bmm(w.view(2, w.shape[0] // 2, w.shape[1]), x.T.expand(2, -1, -1))  # [2, out / 2, M]
    return halves.permute(2, 0, 1).reshape(x.shape[0], w.shape[0]).contiguous()


def _x_wt(x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    return x @ wt


def _wt_x(x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    return (wt.T @ x.T).T.contiguous()


def _onednn(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


FORMULATIONS: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "linear": ("rows", _linear), "w_x": ("rows", _w_x), "w_x_pad": ("rows", _w_x_pad), "halves": ("rows", _halves),
    "x_wt": ("cols", _x_wt), "wt_x": ("cols", _wt_x), "onednn": ("packed", _onednn),
}
LARGE = {"rows": "linear", "cols": "x_wt", "packed": "onednn"}  # past the last bucket


def lay_out(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """A rows-layout weight [out, in] stored as ``layout`` says."""
    if layout == "cols":
        return weight.T.contiguous()
    if layout == "packed":
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_ROWS)
    return weight.contiguous()


def rows_of(stored: torch.Tensor, layout: str) -> torch.Tensor:
    """The rows-layout weight [out, in] behind a stored one (a view for cols, a dense copy if packed)."""
    if layout == "cols":
        return stored.T
    return stored.to_dense() if layout == "packed" else stored


def available(dtype: torch.dtype, device: torch.device) -> tuple[str, ...]:
    """The formulations that can run for weights of ``dtype`` on ``device``."""
    packs = device.type == "cpu" and torch.backends.mkldnn.is_available() and dtype in (torch.float32, torch.bfloat16)
    return tuple(name for name, (layout, _) in FORMULATIONS.items() if layout != "packed" or packs)


@dataclass(frozen=True)
class KernelPlan:
    """The formulation per row bucket, for the decoder layers (``blocks``) and the LM head (``head``)."""

    layout: str  # "rows", "cols" or "packed": how the decoder layers' weights are stored
    blocks: tuple[str, ...]  # [len(ROW_BUCKETS)] formulation names
    head: tuple[str, ...]  # [len(ROW_BUCKETS)] formulation names (rows layout)
    source: str = "default"  # default, forced, measured, cached, fallback

    @classmethod
    def uniform(cls, setting: str, source: str) -> "KernelPlan":
        """Every bucket the same: ``linear``, ``w_x`` (one row padded to two), ``x_wt`` or ``onednn``."""
        layout = FORMULATIONS[setting][0]
        blocks = tuple("w_x_pad" if setting == "w_x" and m == 1 else setting for m in ROW_BUCKETS)
        head = blocks if layout == "rows" else ("linear",) * len(ROW_BUCKETS)
        return cls(layout, blocks, head, source)

    def table(self, part: str) -> list[Callable]:
        """Formulation per row count M = 0 .. ROW_BUCKETS[-1] + 1 (the last entry: every larger M)."""
        names = self.blocks if part == "blocks" else self.head
        layout = self.layout if part == "blocks" else "rows"
        table = [FORMULATIONS[names[0]][1]]
        for m in range(1, ROW_BUCKETS[-1] + 1):
            bucket = next(i for i, b in enumerate(ROW_BUCKETS) if b >= m)
            name = names[bucket]
            table.append(FORMULATIONS["w_x" if name == "w_x_pad" and m > 1 else name][1])
        table.append(FORMULATIONS[LARGE[layout]][1])
        return table

    def describe(self) -> str:
        def runs(names: tuple[str, ...]) -> str:
            parts, start = [], 0
            for i in range(1, len(names) + 1):
                if i == len(names) or names[i] != names[start]:
                    lo, hi = ROW_BUCKETS[start - 1] + 1 if start else 1, ROW_BUCKETS[i - 1]
                    parts.append(f"M={lo}{'' if lo == hi else f'-{hi}'}: {names[start]}")
                    start = i
            return ", ".join(parts)
        return f"{self.source}, weights {self.layout}; layers {runs(self.blocks)}; head {runs(self.head)}"


def project(x: torch.Tensor, weight: torch.Tensor, table: list[Callable]) -> torch.Tensor:
    """x [..., in] times the weight (as its layout stores it), with the formulation for x's rows."""
    rows = x.numel() // x.shape[-1]
    apply = table[rows] if rows < len(table) else table[-1]
    out = apply(x.reshape(rows, x.shape[-1]), weight)
    return out.reshape(*x.shape[:-1], out.shape[-1])


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


def choose(block_times: dict[str, list[float | None]], head_times: dict[str, list[float | None]],
           source: str = "measured") -> KernelPlan:
    """The plan from measured times: per bucket the fastest formulation that beats ``linear`` by MARGIN.

    Another layout (cols, packed) is taken only if it is faster over all buckets together than the
    layout chosen so far and never slower than ``linear`` (beyond MARGIN) in any bucket: weights can
    be stored only one way.
    """
    def best(times: dict[str, list[float | None]], layout: str, bucket: int) -> tuple[str, float]:
        base = LARGE[layout]
        name, seconds = base, times[base][bucket]
        for c, per_bucket in times.items():
            t = per_bucket[bucket]
            if FORMULATIONS[c][0] == layout and t is not None and t < seconds * (1 - MARGIN):
                name, seconds = c, t
        return name, seconds

    buckets = range(len(ROW_BUCKETS))
    layout, total = "rows", sum(best(block_times, "rows", b)[1] for b in buckets)
    for other in ("cols", "packed"):
        if LARGE[other] not in block_times:
            continue
        times = [best(block_times, other, b)[1] for b in buckets]
        never_worse = all(t <= block_times["linear"][b] * (1 + MARGIN) for b, t in zip(buckets, times))
        if never_worse and sum(times) < total * (1 - MARGIN):
            layout, total = other, sum(times)
    return KernelPlan(layout, tuple(best(block_times, layout, b)[0] for b in buckets),
                      tuple(best(head_times, "rows", b)[0] for b in buckets), source)


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


def plan_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / "kernels" / f"{digest}.json"


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
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == json.loads(json.dumps(key)):
                plan = saved["plan"]
                return KernelPlan(plan["layout"], tuple(plan["blocks"]), tuple(plan["head"]), "cached")
        except (OSError, ValueError, TypeError):
            pass  # unreadable: measure again and overwrite
    try:
        print("specplug: timing the linear-layer kernels for this CPU (once; cached)", file=sys.stderr, flush=True)
        plan = choose(measure(block_weights, can_run),
                      measure([head], tuple(n for n in can_run if FORMULATIONS[n][0] == "rows")))
    except RuntimeError as exc:
        warnings.warn(f"could not time the linear kernels ({exc}); using F.linear everywhere")
        return KernelPlan.uniform("linear", "fallback")
    if path is not None:
        _save(path, key, plan)
    return plan


def _save(path: Path, key: dict, plan: KernelPlan) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({"key": key, "plan": asdict(plan)}, indent=1))
        partial.replace(path)
    except OSError as exc:
        warnings.warn(f"could not cache the kernel choice at {path} ({exc}); it will be measured again")
