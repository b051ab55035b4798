"""A static KV cache in grouped-query-attention layout, with per-row lengths and rollback.

Per layer, K and V are preallocated buffers of shape [slots, kv_heads, max_len, head_dim]: KV heads
are stored once (never repeated to the query-head count). ``lengths[slot]`` counts the positions of
that row whose K/V are valid. Rolling back rejected draft positions only moves that length: stale
entries beyond it are masked out by position and overwritten by the next write.
"""

from __future__ import annotations

import torch
from torch import nn

from specplug.errors import SpecplugError

MEMORY_SHARE = 0.9  # of the memory available now that one cache may take


class StaticKVCache(nn.Module):
    def __init__(
        self,
        num_layers: int,
        slots: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        shape = (slots, kv_heads, max_len, head_dim)
        check_fits(2 * num_layers * slots * kv_heads * max_len * head_dim * dtype.itemsize, slots, max_len,
                   torch.device(device))
        for layer in range(num_layers):
            self.register_buffer(f"k{layer}", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
            self.register_buffer(f"v{layer}", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.num_layers, self.slots, self.max_len = num_layers, slots, max_len
        self.lengths = [0] * slots  # [slots] valid positions per row
        self.register_buffer("row_index", torch.arange(slots, device=device)[:, None], persistent=False)  # [slots, 1]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"k{index}"), getattr(self, f"v{index}")

    def write(
        self, index: int, rows: slice, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Store k, v [B, T, kv_heads, head_dim] of ``rows`` at ``positions`` [B, T]."""
        k_cache, v_cache = self.layer(index)
        batch = self.row_index[: positions.shape[0]]
        k_cache[rows][batch, :, positions] = k
        v_cache[rows][batch, :, positions] = v

    def read(self, index: int, rows: slice, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views [B, kv_heads, upto, head_dim] of ``rows`` (no copy)."""
        k_cache, v_cache = self.layer(index)
        return k_cache[rows, :, :upto], v_cache[rows, :, :upto]

    def rollback(self, slot: int, length: int) -> None:
        """Forget every position of ``slot`` from ``length`` on."""
        if not 0 <= length <= self.lengths[slot]:
            raise ValueError(f"cannot roll slot {slot} back to {length}: it holds {self.lengths[slot]}")
        self.lengths[slot] = length

    def move(self, src: int, dst: int) -> None:
        """Copy row ``src`` into slot ``dst`` (keeps the live rows packed at the front)."""
        n = self.lengths[src]
        for index in range(self.num_layers):
            for buf in self.layer(index):
                buf[dst, :, :n] = buf[src, :, :n]
        self.lengths[dst], self.lengths[src] = n, 0

    def release(self, rows: list, row) -> None:
        """Drop ``row`` from ``rows`` (rows[i] lives in slot i, each with a ``slot`` attribute), moving
        the last row into the freed slot so live rows stay packed at the front."""
        last = rows.pop()
        if last is not row:
            self.move(last.slot, row.slot)
            last.slot = row.slot
            rows[row.slot] = last
        self.lengths[len(rows)] = 0


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a new allocation on ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_fits(needed: int, slots: int, max_len: int, device: torch.device) -> None:
    """Refuse, in one line, a cache that cannot fit, before allocating any of it."""
    free = available_bytes(device)
    if free is None or needed <= MEMORY_SHARE * free:
        return
    per_row = needed / slots
    rows = int(MEMORY_SHARE * free // per_row)
    raise SpecplugError(
        f"a KV cache of {slots} rows x {max_len} positions needs {needed / 1e9:.1f} GB and {free / 1e9:.1f} GB is "
        f"available on {device.type}: use at most {rows} rows (--batch-size, serve.max_batch_size) or a smaller "
        "max_model_len")
