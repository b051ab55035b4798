"""Data passed between the decode loop, proposers and verifiers (engine-independent).

Shapes are given beside each field: B = rows in the batch, K = most drafts of any row this step,
V = vocabulary size, N = tokens a row holds so far.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

# Temperatures below this are greedy (as vLLM's _SAMPLING_EPS): logits / 1e-38 overflows float32, and a
# distribution that sharp is argmax anyway.
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How the target's next token is chosen. ``temperature < GREEDY_TEMPERATURE`` (0 included) is greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


@dataclass
class DraftRequest:
    """What a proposer sees of one row at one step."""

    seq_id: Hashable  # stable for the life of the request; state kept per row is keyed by it
    token_ids: Sequence[int]  # [N] prompt + every accepted output token (list or 1-D numpy array)
    num_prompt_tokens: int
    max_draft_tokens: int  # propose at most this many (may be 0: propose nothing)
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Draft:
    """A proposer's answer for one row."""

    token_ids: list[int]  # [n_draft], n_draft <= max_draft_tokens
    # [n_draft, V] distribution each draft token was sampled from (same filters as the target's);
    # None for a deterministic draft (n-gram lookup, greedy draft), verified as one-hot.
    probs: torch.Tensor | None = None
    # [n_draft] optional: the proposer's estimate that each draft token matches the target's, given that
    # the ones before it did. ``adaptive_k: auto`` learns how far to trust it and cuts drafts that would
    # cost more verify time than they are expected to save; other draft policies ignore it.
    confidence: Sequence[float] | None = None

    def cut(self, n: int) -> "Draft":
        """The first ``n`` tokens of this draft."""
        if n >= len(self.token_ids):
            return self
        return Draft(self.token_ids[:n], None if self.probs is None else self.probs[:n],
                     None if self.confidence is None else self.confidence[:n])


@dataclass(frozen=True)
class VerifyOutcome:
    """What the verifier decided for one row, told back to the proposer."""

    seq_id: Hashable
    num_draft: int
    num_accepted: int  # accepted draft tokens; the row emitted num_accepted + 1 tokens
    emitted: tuple[int, ...]  # accepted drafts then the recovered or bonus token


@dataclass
class VerifyInput:
    """A verify step for the whole batch."""

    target_logits: torch.Tensor  # [B, K + 1, V]; row b is valid in its first num_draft[b] + 1 positions
    draft_token_ids: torch.Tensor  # [B, K] long, 0 beyond num_draft[b]
    num_draft: torch.Tensor  # [B] long
    draft_probs: torch.Tensor | None  # [B, K, V], or None when every row's draft is deterministic
    sampling: Sequence[SamplingParams]  # [B]
    generator: torch.Generator | None = None  # one stream for the batch (used when row_generators is None)
    # [B][K + 1]: row b's stream for each of its positions (a position's uniform, then its final draw);
    # an empty list for a greedy row
    row_generators: Sequence[Sequence[torch.Generator]] | None = None


@dataclass
class VerifyOutput:
    output_token_ids: torch.Tensor  # [B, K + 1] long: emitted tokens, -1 after num_accepted[b] + 1
    num_accepted: torch.Tensor  # [B] long


@dataclass
class ProposerContext:
    """What a proposer factory is told about the engine it will serve."""

    num_speculative_tokens: int  # k: the most tokens a row may be asked for
    vocab_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    max_batch_size: int = 1  # rows the engine may run at once (size per-row state by it)
    max_model_len: int = 2048  # the most tokens a row may hold
    tokenizer: object | None = None  # a transformers tokenizer, when the engine has one
    target: object | None = None  # the engine's target model, for proposers that share its weights
    enforce_eager: bool = False  # model drafters: never capture CUDA graphs of their steps
    # how an adapter whose engine keeps its weights out of reach loads a copy of the target on demand
    load_target: Callable[[], object] | None = field(default=None, repr=False)

    def target_model(self) -> object | None:
        """The target as a specplug model (loaded on first use where an adapter supplies ``load_target``)."""
        if self.target is None and self.load_target is not None:
            self.target = self.load_target()
        return self.target
