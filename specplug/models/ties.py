"""When two greedy outputs may part: rounding can flip the argmax only where the top two logits nearly tie.

Used wherever greedy outputs are compared (``specplug bench``, the conformance kit, the tests).
"""

from __future__ import annotations

from typing import Any

import torch

# One k-token forward and k one-token forwards give logits up to ~5e-5 apart in fp32; a greedy
# mismatch is legitimate only where the top two logits are closer than this.
NEAR_TIE = 1e-4
# In bfloat16 / float16 the logits themselves are rounded to 8 / 11 significant bits and every layer's
# output is rounded again, so a multi-token verify pass and a one-token step can part where the top two
# logits lie within a few units in the last place: measured gaps of 0.125-0.5 at logits near 16-20.
HALF_NEAR_TIE_ULPS = 4


def near_tie_threshold(dtype: torch.dtype, top: float) -> float:
    """Top-2 logit gap below which rounding may legitimately flip a greedy choice in ``dtype``."""
    if dtype in (torch.bfloat16, torch.float16):
        return HALF_NEAR_TIE_ULPS * torch.finfo(dtype).eps * max(abs(top), 1.0)
    return NEAR_TIE


def top_two_gap(logits: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """(the gap between the two largest of ``logits`` [V], the near-tie threshold for ``dtype`` there)."""
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1]), near_tie_threshold(dtype, float(top[0]))


@torch.inference_mode()
def first_mismatch(hf_model, prompt_ids: list[int], reference: list[int], other: list[int]) -> dict[str, Any] | None:
    """Where two greedy outputs part, with the reference's top-2 logit gap there (None if equal).

    ``near_tie`` is True when the gap is below ``near_tie_threshold`` for the model's dtype: rounding
    may then flip the argmax.
    """
    for i, (a, b) in enumerate(zip(reference, other)):
        if a != b:
            break
    else:
        if len(reference) == len(other):
            return None
        return {"position": min(len(reference), len(other)), "gap": None, "near_tie": False,
                "reason": "lengths differ"}
    gap, threshold = top_two_gap(hf_model(torch.tensor([prompt_ids + reference[:i]])).logits[0, -1], hf_model.dtype)
    return {"position": i, "gap": gap, "threshold": threshold, "near_tie": gap <= threshold,
            "reason": f"token {a} vs {b}"}
