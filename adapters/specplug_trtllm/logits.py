"""Draft probabilities to the logits TensorRT-LLM wants in ``py_draft_logits``.

``TorchSampler`` (tensorrt_llm/_torch/pyexecutor/sampler.py, 1.1-1.2) samples the draft distribution
for rejection sampling by applying the request's own sampling strategy to ``py_draft_logits``:
softmax(logits / temperature), then top-k / top-p. A specplug proposer returns the distribution it
drew from, already tempered and filtered, so the logits handed over are temperature * log(probs):
tempering them again gives the probabilities back, and top-k keeps the same support. Top-p applied a
second time would cut the tail of an already renormalised distribution, so with top_p < 1 the adapter
hands over no logits: the drafts are then verified as one-hot proposals, still lossless.
"""

from __future__ import annotations

import torch


def probs_to_logits(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """[n_draft, V] probabilities -> [n_draft, V] float32 logits (-inf where the probability is 0)."""
    return temperature * torch.log(probs.float())


def logits_to_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """What TensorRT-LLM's sampler makes of ``py_draft_logits`` before top-k / top-p."""
    return torch.softmax(logits / temperature, dim=-1)


def pad_logits(logits: torch.Tensor, length: int, pad_token: int = 0) -> torch.Tensor:
    """Rows for padding tokens: a one-hot proposal of ``pad_token`` (verified as such: lossless)."""
    missing = length - logits.shape[0]
    if missing <= 0:
        return logits
    pad = torch.full((missing, logits.shape[1]), float("-inf"), dtype=logits.dtype, device=logits.device)
    pad[:, pad_token] = 0.0
    return torch.cat([logits, pad])
