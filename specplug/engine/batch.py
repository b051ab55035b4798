"""Packing a step for the verifier, and reading log-probabilities out of the target's logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specplug.metadata import Draft, SamplingParams, VerifyInput


@dataclass(frozen=True)
class TokenLogprob:
    """The target's log-probability (raw logits, before sampling filters) of an emitted token."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the most likely tokens at that position, best first



def token_logprobs(logits: torch.Tensor, token_ids: list[int], top: int) -> list[TokenLogprob]:
    """Log-probabilities of ``token_ids`` at positions 0.. of one row's ``logits`` [K + 1, V]."""
    if not token_ids:
        return []
    logprobs = logits[: len(token_ids)].float().log_softmax(-1)  # [n, V]
    chosen = logprobs.gather(-1, torch.tensor(token_ids, device=logprobs.device)[:, None])[:, 0].tolist()
    best = logprobs.topk(top, dim=-1) if top else None
    result = []
    for j, (token, value) in enumerate(zip(token_ids, chosen)):
        pairs = tuple(zip(best.indices[j].tolist(), best.values[j].tolist())) if best is not None else ()
        result.append(TokenLogprob(token, value, pairs))
    return result


def verify_input(drafts: list[Draft], logits: torch.Tensor, sampling: list[SamplingParams],
                 row_generators: list[list[torch.Generator]]) -> VerifyInput:
    """Pack per-row drafts into the verifier's padded tensors."""
    device = logits.device
    width = logits.shape[1] - 1
    token_ids = torch.zeros((len(drafts), width), dtype=torch.long, device=device)
    for i, draft in enumerate(drafts):
        token_ids[i, : len(draft.token_ids)] = torch.tensor(draft.token_ids, dtype=torch.long)
    num_draft = torch.tensor([len(d.token_ids) for d in drafts], device=device)
    probs = None
    if any(d.probs is not None for d in drafts):
        # rows without probabilities are deterministic drafts: one-hot
        probs = torch.nn.functional.one_hot(token_ids, logits.shape[-1]).float()
        for i, draft in enumerate(drafts):
            if draft.probs is not None and draft.token_ids:
                probs[i, : len(draft.token_ids)] = draft.probs.to(device=device, dtype=torch.float32)
    return VerifyInput(logits, token_ids, num_draft, probs, sampling, row_generators=row_generators)
