"""Turning logits into the distribution the target samples from, and sampling it.

Order of filters, as in HF ``generate``: temperature, then top-k, then top-p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specplug.metadata import SamplingParams


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """[B] python values -> [B, 1, 1] tensor broadcastable over [B, T, V]."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


def filter_logits(logits: torch.Tensor, sampling: Sequence[SamplingParams]) -> torch.Tensor:
    """Apply each row's temperature, top-k and top-p to ``logits`` [B, T, V] (rows must not be greedy).

    Filtered-out entries become -inf. Returns float32 logits of the same shape.
    """
    logits = logits.float() / _column([s.temperature for s in sampling], logits.float())
    top_ks = [s.top_k for s in sampling]
    if any(k > 0 for k in top_ks):
        vocab = logits.shape[-1]
        ks = torch.tensor([min(k, vocab) if k > 0 else vocab for k in top_ks], device=logits.device)
        top = torch.topk(logits, int(ks.max()), dim=-1).values  # [B, T, kmax]
        kth = top.gather(-1, (ks - 1).view(-1, 1, 1).expand(-1, logits.shape[1], 1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if any(s.top_p < 1.0 for s in sampling):
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # 1 - top_p in float64, as HF does: 1 - float32(0.9) is 0.100000024 and cuts a token HF keeps
        remove = cumulative <= _column([1 - s.top_p for s in sampling], cumulative)
        remove[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


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


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
