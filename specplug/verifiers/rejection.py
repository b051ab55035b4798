"""Lossless verification of draft tokens.

Glossary (as in vLLM's rejection sampler):
- draft tokens: the up-to-k tokens a proposer suggested for a row.
- accepted tokens: the longest prefix of the draft tokens that the target keeps.
- recovered token: at the first rejected position i, a token drawn from the residual distribution
  max(0, target_probs_i - draft_probs_i), normalised; greedy: the target's argmax at i.
- bonus token: when every draft token was accepted, one token drawn from the target's distribution
  at position k + 1 (it costs nothing: the verify pass computed those logits anyway).
Each row therefore emits num_accepted + 1 tokens per verify step (1 .. k + 1).

Rules (Leviathan et al. 2023): accept draft token x at position i with probability
min(1, target_probs_i(x) / draft_probs_i(x)). A deterministic draft is a one-hot draft_probs, so x is
accepted with probability target_probs_i(x) and the residual is target_probs_i with x removed.
The output distribution then equals the target's exactly, whatever the proposer does.
"""

from __future__ import annotations

import torch

from specplug.errors import ConfigError
from specplug.metadata import VerifyInput, VerifyOutput
from specplug.sampling import sample, target_probs
from specplug.verifiers.base import Verifier


def _accepted_prefix(accept: torch.Tensor) -> torch.Tensor:
    """accept [B, K] bool -> [B] long: length of the all-True prefix of each row."""
    return accept.long().cumprod(dim=1).sum(dim=1)


def _emitted(drafts: torch.Tensor, num_accepted: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """Accepted drafts followed by the final (recovered/bonus) token, -1 after: [B, K + 1]."""
    batch, k = drafts.shape
    out = torch.cat([drafts, drafts.new_full((batch, 1), -1)], dim=1)
    positions = torch.arange(k + 1, device=drafts.device).expand(batch, -1)
    out = out.masked_fill(positions > num_accepted[:, None], -1)
    return out.scatter(1, num_accepted[:, None], final[:, None])


def _valid_drafts(batch: VerifyInput) -> torch.Tensor:
    k = batch.draft_token_ids.shape[1]
    return torch.arange(k, device=batch.num_draft.device)[None, :] < batch.num_draft[:, None]


def verify_greedy(batch: VerifyInput) -> VerifyOutput:
    """Accept a draft token iff it equals the target's argmax; the final token is the argmax after it."""
    argmax = batch.target_logits.argmax(dim=-1)  # [B, K + 1]
    k = batch.draft_token_ids.shape[1]
    accept = (batch.draft_token_ids == argmax[:, :k]) & _valid_drafts(batch)
    num_accepted = _accepted_prefix(accept)
    final = argmax.gather(1, num_accepted[:, None]).squeeze(1)
    return VerifyOutput(_emitted(batch.draft_token_ids, num_accepted, final), num_accepted)


def verify_by_rejection(batch: VerifyInput) -> VerifyOutput:
    """Rejection sampling for rows with temperature > 0 (see the module docstring)."""
    drafts = batch.draft_token_ids
    rows = torch.arange(drafts.shape[0], device=drafts.device)
    k = drafts.shape[1]
    probs = target_probs(batch.target_logits, batch.sampling)  # [B, K + 1, V]
    target_x = probs[:, :k].gather(-1, drafts[..., None]).squeeze(-1)  # [B, K]
    if batch.draft_probs is None:
        draft_x = torch.ones_like(target_x)
    else:
        draft_x = batch.draft_probs.float().gather(-1, drafts[..., None]).squeeze(-1)
    uniform = _uniforms(batch, target_x)
    accept = (uniform * draft_x < target_x) & _valid_drafts(batch)
    num_accepted = _accepted_prefix(accept)

    final_probs = probs[rows, num_accepted]  # [B, V]: bonus distribution unless a draft was rejected
    rejected = num_accepted < batch.num_draft
    residual = _residual(final_probs, batch, rows, num_accepted.clamp(max=max(k - 1, 0)))
    usable = rejected & (residual.sum(-1) > 0)  # p == q leaves no residual: sample from p
    final_probs = torch.where(usable[:, None], residual, final_probs)
    final = _final_draws(batch, final_probs, num_accepted)
    return VerifyOutput(_emitted(drafts, num_accepted, final), num_accepted)


def _uniforms(batch: VerifyInput, like: torch.Tensor) -> torch.Tensor:
    """One uniform per draft position [B, K]: from the batch stream, or each valid position's own."""
    if batch.row_generators is None:
        return torch.rand(like.shape, generator=batch.generator, device=like.device)
    uniform = torch.ones_like(like)
    for b, (generators, n) in enumerate(zip(batch.row_generators, batch.num_draft.tolist())):
        for j in range(n):
            uniform[b, j] = torch.rand(1, generator=generators[j], device=like.device)[0]
    return uniform


def _final_draws(batch: VerifyInput, probs: torch.Tensor, num_accepted: torch.Tensor) -> torch.Tensor:
    """The recovered or bonus token of each row [B], drawn from ``probs`` [B, V]."""
    if batch.row_generators is None:
        return sample(probs, batch.generator)
    return torch.cat([sample(probs[b: b + 1], generators[j]) for b, (generators, j) in
                      enumerate(zip(batch.row_generators, num_accepted.tolist()))])


def _residual(
    probs_at: torch.Tensor, batch: VerifyInput, rows: torch.Tensor, position: torch.Tensor
) -> torch.Tensor:
    """max(0, target_probs - draft_probs) at ``position`` of each row (unnormalised), [B, V]."""
    if batch.draft_token_ids.shape[1] == 0:
        return torch.zeros_like(probs_at)
    if batch.draft_probs is None:
        rejected_token = batch.draft_token_ids[rows, position]
        return probs_at.scatter(-1, rejected_token[:, None], 0.0)
    return (probs_at - batch.draft_probs[rows, position].float()).clamp(min=0.0)


def _select(batch: VerifyInput, rows: torch.Tensor) -> VerifyInput:
    return VerifyInput(
        target_logits=batch.target_logits[rows],
        draft_token_ids=batch.draft_token_ids[rows],
        num_draft=batch.num_draft[rows],
        draft_probs=None if batch.draft_probs is None else batch.draft_probs[rows],
        sampling=[batch.sampling[i] for i in rows.tolist()],
        generator=batch.generator,
        row_generators=None if batch.row_generators is None else [batch.row_generators[i] for i in rows.tolist()],
    )


class RejectionSampler(Verifier):
    """The default verifier: greedy rows by exact match, sampled rows by rejection sampling."""

    name = "rejection"

    def verify(self, batch: VerifyInput) -> VerifyOutput:
        greedy = torch.tensor([s.greedy for s in batch.sampling], device=batch.num_draft.device)
        if bool(greedy.all()):
            return verify_greedy(batch)
        if not bool(greedy.any()):
            return verify_by_rejection(batch)
        tokens = batch.draft_token_ids.new_empty((len(greedy), batch.target_logits.shape[1]))
        num_accepted = torch.empty_like(batch.num_draft)
        for rows, rule in ((greedy.nonzero()[:, 0], verify_greedy),
                           ((~greedy).nonzero()[:, 0], verify_by_rejection)):
            part = rule(_select(batch, rows))
            tokens[rows], num_accepted[rows] = part.output_token_ids, part.num_accepted
        return VerifyOutput(tokens, num_accepted)


class GreedyVerifier(Verifier):
    """Exact match against the target's argmax; refuses sampled rows."""

    name = "greedy"

    def verify(self, batch: VerifyInput) -> VerifyOutput:
        if not all(s.greedy for s in batch.sampling):
            raise ConfigError(
                "verifier 'greedy' needs sampling.temperature = 0; "
                "use verifier 'rejection' (the default) to sample"
            )
        return verify_greedy(batch)
