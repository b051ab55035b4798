"""Turning logits into the distribution the target samples from, and sampling it.

Order of filters, as in HF ``generate``: temperature, then top-k, then top-p.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from specplug.metadata import SamplingParams


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """[B] python values -> [B, 1, 1] tensor broadcastable over [B, T, V]."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


def filter_logits(logits: torch.Tensor, sampling: Sequence[SamplingParams]) -> torch.Tensor:
    """Apply each row's temperature, top-k and top-p to ``logits`` [B, T, V] (rows must not be greedy).

    Filtered-out entries become -inf. Returns float32 logits of the same shape. Which tokens top-k and top-p
    keep is decided in the order of the raw logits, so that a temperature large enough to flatten the
    tempered ones in float32 (1e30, say) still keeps the most likely tokens.
    """
    raw = logits.float()
    tempered = raw / _column([s.temperature for s in sampling], raw)
    top_ks = [s.top_k for s in sampling]
    if any(k > 0 for k in top_ks):
        vocab = raw.shape[-1]
        ks = torch.tensor([min(k, vocab) if k > 0 else vocab for k in top_ks], device=raw.device)
        top = torch.topk(raw, int(ks.max()), dim=-1).values  # [B, T, kmax]
        kth = top.gather(-1, (ks - 1).view(-1, 1, 1).expand(-1, raw.shape[1], 1))
        cut = raw < kth
        raw, tempered = raw.masked_fill(cut, float("-inf")), tempered.masked_fill(cut, float("-inf"))
    if any(s.top_p < 1.0 for s in sampling):
        order = torch.sort(raw, dim=-1).indices  # ascending
        cumulative = tempered.gather(-1, order).softmax(-1).cumsum(-1)
        # 1 - top_p in float64, as HF does: 1 - float32(0.9) is 0.100000024 and cuts a token HF keeps
        remove = cumulative <= _column([1 - s.top_p for s in sampling], cumulative)
        remove[..., -1] = False  # always keep the most likely token
        tempered = tempered.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return tempered


def target_probs(logits: torch.Tensor, sampling: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution each position samples from: [B, T, V] float32 (rows must not be greedy)."""
    return filter_logits(logits, sampling).softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row of ``probs`` [B, V]; returns [B] long."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def position_generator(seed: int, position: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream of one output position of a seeded request.

    Keyed by (seed, position) rather than drawn from one stream per request, so that a request's tokens
    depend only on its seed, never on how many drafts were verified at once or which rows shared the batch.
    """
    return torch.Generator(device=device).manual_seed(hash((seed, position)) & 0x7FFF_FFFF_FFFF_FFFF)


def request_seed(seed: int, index: int) -> int:
    """The seed of request ``index`` of a run seeded with ``seed``: the run is reproducible, and each request
    samples from a stream of its own (never a copy of another's). Within 0..2**63 - 1."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
