"""The formulations a linear layer can be computed with, how each stores its weights, and the plan
that says which one serves each row count (chosen by kernel_choice.py: measured on this machine).

Formulations (``layout`` says how the decoder layers' weights are stored):
  linear     F.linear(x, W)              rows layout: W [out, in]
  w_x        (W @ x.T).T                 rows layout
  w_x_pad    one row padded to two, w_x  rows layout, M = 1 only
  halves     W's two halves in one bmm   rows layout (two threads stream one half each)
  x_wt       x @ Wt                      cols layout: Wt = W.T stored contiguous [in, out]
  wt_x       (Wt.T @ x.T).T              cols layout
  onednn     oneDNN's prepacked linear   packed layout: W reordered once into oneDNN's blocked format
The LM head (often tied to the embedding) always keeps the rows layout. A plan stores the layer
weights one way, except that it may add packed copies to the rows layout of the layers and of the
head (oneDNN for the row counts where it is fastest, the rows formulations for the others) when that
speeds up a decode step or a verify pass and the copies take at most COPY_SHARE of the memory
available: the plan states their size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROW_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32)  # M measured; between buckets the next one up rules
PACK_ROWS = 4  # the row count oneDNN's packed layout is ordered for (one pack serves every M)


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
    if torch.compiler.is_compiling():
        return _opaque_onednn(x, packed)
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


@torch.library.custom_op("specplug::onednn_linear", mutates_args=())
def _opaque_onednn(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """oneDNN's prepacked linear as an op inductor calls as it is (it cannot lower packed weights);
    eager calls skip this wrapper, which costs a dispatch."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


@_opaque_onednn.register_fake
def _(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], packed.shape[0])


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


def stored_bytes(weights: Iterable[torch.Tensor]) -> int:
    """Bytes the weights hold, whatever their layout (a packed weight keeps its elements)."""
    return sum(w.numel() * w.element_size() for w in weights)


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
    copy_mb: float = 0.0  # the packed copies kept beside the rows layout (layers and / or head; 0: none)

    @property
    def packed_copy(self) -> bool:
        """Whether the layers' rows layout is served by a packed copy at some row counts."""
        return self.layout != "packed" and any(FORMULATIONS[name][0] == "packed" for name in self.blocks)

    @property
    def head_copy(self) -> bool:
        """Whether the LM head (rows layout) is served by a packed copy at some row counts."""
        return any(FORMULATIONS[name][0] == "packed" for name in self.head)

    @classmethod
    def uniform(cls, setting: str, source: str) -> "KernelPlan":
        """Every bucket the same: ``linear``, ``w_x`` (one row padded to two), ``x_wt`` or ``onednn``."""
        layout = FORMULATIONS[setting][0]
        blocks = tuple("w_x_pad" if setting == "w_x" and m == 1 else setting for m in ROW_BUCKETS)
        head = blocks if layout == "rows" else ("linear",) * len(ROW_BUCKETS)
        return cls(layout, blocks, head, source)

    def table(self, part: str) -> list[tuple[str, Callable]]:
        """(layout, formulation) per row count M = 0 .. ROW_BUCKETS[-1] + 1 (the last: every larger M)."""
        names = self.blocks if part == "blocks" else self.head
        layout = self.layout if part == "blocks" else "rows"
        table = [FORMULATIONS[names[0]]]
        for m in range(1, ROW_BUCKETS[-1] + 1):
            bucket = next(i for i, b in enumerate(ROW_BUCKETS) if b >= m)
            name = names[bucket]
            table.append(FORMULATIONS["w_x" if name == "w_x_pad" and m > 1 else name])
        table.append(FORMULATIONS["onednn" if names[-1] == "onednn" else LARGE[layout]])
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
        parts = [part for part, kept in (("layers", self.packed_copy), ("head", self.head_copy)) if kept]
        copy = f" + packed copies of the {' and '.join(parts)} ({self.copy_mb:.0f} MB)" if parts else ""
        return f"{self.source}, weights {self.layout}{copy}; layers {runs(self.blocks)}; head {runs(self.head)}"


def project(x: torch.Tensor, weight: torch.Tensor, table: list[tuple[str, Callable]],
            packed: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] times the weight (as its layout stores it, or its ``packed`` copy where the table
    says), with the formulation for x's rows."""
    rows = x.numel() // x.shape[-1]
    layout, apply = table[rows] if rows < len(table) else table[-1]
    out = apply(x.reshape(rows, x.shape[-1]), packed if layout == "packed" and packed is not None else weight)
    return out.reshape(*x.shape[:-1], out.shape[-1])
