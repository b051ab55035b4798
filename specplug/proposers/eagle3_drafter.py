"""Drafting with an EAGLE-3 head (``models.eagle3``) from the target's own features.

Per row the drafter keeps the target features it was handed (``on_target_features``: the positions
whose tokens are final) and ``fed``: how many of them its head's KV cache holds as real entries. At each
step it feeds the new ones in one catch-up forward (entry i: features at i, the token at i + 1), whose
last output gives the first draft token, then chains: each draft step reads the last step's output as its
hidden input and the token it drafted. Draft entries lie past ``fed`` and are overwritten by the next
catch-up, which is the rollback. A row whose features have a gap (its strategy was swapped in mid-way)
is drafted for no more: lossless, only slower. The head's draft logits are spread over the target's
vocabulary for ``chain`` (greedy, or sampled with the head's distribution for sampled rows).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from specplug.metadata import Draft, DraftRequest
from specplug.models.eagle3 import Eagle3Head, entries
from specplug.models.kv_cache import StaticKVCache
from specplug.models.llama import CompactLlama
from specplug.proposers.base import Proposer
from specplug.proposers.chain import Chain, pick
from specplug.sampling import make_generator


@dataclass
class HeadSlot:
    """The head's KV-cache slot for one row, and the target features it has not fed yet."""

    seq_id: Hashable
    slot: int
    generator: torch.Generator | None = None  # the row's own draws, seeded by its request when first drafted
    pending: list[torch.Tensor] = field(default_factory=list)  # [m, F] chunks of target features
    have: int = 0  # positions whose target features were handed over
    fed: int = 0  # positions the head's cache holds real entries for
    last_hidden: torch.Tensor | None = None  # [H]: the head input of entry fed - 1 (re-fed if nothing is new)
    blind: bool = False  # its features have a gap: no more drafts


class Eagle3Drafter(Proposer):
    def __init__(self, name: str, head: Eagle3Head, embed: torch.Tensor, max_rows: int, max_len: int, k: int,
                 confidence_threshold: float = 0.0):
        self.name, self.head, self.embed = name, head, embed  # embed: the target's [V, H] embedding
        self.feature_layers = head.shape.layers
        self.confidence_threshold = confidence_threshold
        s = head.shape
        self.cache = StaticKVCache(1, max_rows, s.kv_heads, max_len + k + 2, s.head_dim, embed.dtype, embed.device)
        self.max_rows = max_rows
        self.rows: list[HeadSlot] = []  # rows[i] lives in cache slot i
        self.by_id: dict[Hashable, HeadSlot] = {}

    # ---- what the host tells it -----------------------------------------------------------------
    def on_target_features(self, seq_id: Hashable, first_position: int, features: torch.Tensor) -> None:
        row = self.by_id.get(seq_id) or self._new_row(seq_id)
        if first_position == 0:  # a new request (or one under a reused id): start over
            row.pending, row.have, row.fed, row.blind = [], 0, 0, False
        if first_position != row.have:
            row.blind = True
            row.pending = []
            return
        row.pending.append(features)
        row.have += features.shape[0]

    def release(self, seq_id: Hashable) -> None:
        row = self.by_id.pop(seq_id, None)
        if row is not None:
            self.cache.release(self.rows, row)

    # ---- drafting --------------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        ready = [(r, self.by_id[r.seq_id]) for r in requests if r.max_draft_tokens > 0 and self._ready(r)]
        drafts: dict[Hashable, Draft] = {}
        if ready:
            requests_, rows = zip(*ready)
            drafts = self._draft(list(requests_), list(rows))
        return [drafts.get(r.seq_id, Draft([])) for r in requests]

    def _ready(self, request: DraftRequest) -> bool:
        row = self.by_id.get(request.seq_id)
        return row is not None and not row.blind and row.have == len(request.token_ids) - 1

    def _draft(self, requests: list[DraftRequest], rows: list[HeadSlot]) -> dict[Hashable, Draft]:
        for request, row in zip(requests, rows):
            if row.generator is None:
                row.generator = make_generator(request.sampling.seed, self.embed.device)
        logits, hidden, positions = self._catch_up(requests, rows)
        chain = Chain(requests, self.confidence_threshold)
        running = list(range(len(rows)))
        while running := chain.extend(running, lambda i: self._pick(requests[i], rows[i], chain.tokens[i],
                                                                    logits[i])):
            positions = {i: positions[i] + 1 for i in running}
            step_logits, step_hidden = self._forward([rows[i] for i in running],
                                                     [[chain.tokens[i][-1]] for i in running],
                                                     [hidden[i][None] for i in running],
                                                     [positions[i] for i in running])
            logits = dict(zip(running, step_logits))
            hidden = dict(zip(running, step_hidden))
        return {r.seq_id: d for r, d in zip(requests, chain.drafts(with_confidence=True))}

    def _catch_up(self, requests: list[DraftRequest], rows: list[HeadSlot]):
        """Feed each row's new features (entry i: features at i, token i + 1): per row index, the draft
        logits and the hidden output of its last real entry, and that entry's position."""
        chunks, hiddens, starts = [], [], []
        for request, row in zip(requests, rows):
            if row.pending:
                new = self.head.project_features(torch.cat(row.pending))
                row.pending = []
            else:  # nothing new since the last draft: feed the last entry again
                row.fed -= 1
                new = row.last_hidden[None]
            row.last_hidden = new[-1]
            starts.append(row.fed)
            chunks.append([int(t) for t in request.token_ids[row.fed + 1: row.fed + 1 + new.shape[0]]])
            hiddens.append(new)
            row.fed += new.shape[0]
        logits, hidden = self._forward(rows, chunks, hiddens, starts)
        return dict(enumerate(logits)), dict(enumerate(hidden)), {i: starts[i] + len(c) - 1 for i, c in enumerate(chunks)}

    def _forward(self, rows: list[HeadSlot], chunks: list[list[int]], hiddens: list[torch.Tensor],
                 starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One head step over every live slot, ``rows`` fed ``chunks`` (tokens) with ``hiddens`` [m, H] from
        positions ``starts`` on, the other slots a dummy entry past their real ones (overwritten later).
        Every entry's keys and values go to the cache; only each row's last entry goes on through
        attention, the MLP and the LM head (a catch-up over a whole prompt needs nothing else).
        Returns its draft logits [len(rows), draft_vocab] and hidden output [len(rows), H]."""
        width = max(map(len, chunks))
        live, s = len(self.rows), self.head.shape
        ids = torch.zeros((live, width), dtype=torch.long)
        hidden = torch.zeros((live, width, s.hidden), dtype=self.embed.dtype, device=self.embed.device)
        start = torch.tensor([self.cache.lengths[i] for i in range(live)])
        last = torch.zeros((live, 1), dtype=torch.long)  # [live, 1]: each slot's last real entry
        for row, chunk, h, first in zip(rows, chunks, hiddens, starts):
            ids[row.slot, : len(chunk)] = torch.tensor(chunk, dtype=torch.long)
            hidden[row.slot, : len(chunk)] = h
            start[row.slot], last[row.slot] = first, len(chunk) - 1
        positions = (start[:, None] + torch.arange(width)).clamp(max=self.cache.max_len - 1).to(self.embed.device)
        last = last.to(self.embed.device)
        upto = int(positions.max()) + 1
        q, k, v = self.head.qkv(F.embedding(ids.to(self.embed.device), self.embed), hidden, positions, last)
        self.cache.write(0, slice(0, live), positions, k.transpose(1, 2), v.transpose(1, 2))
        k_all, v_all = self.cache.read(0, slice(0, live), upto)
        mask = CompactLlama.attention_mask(positions.gather(1, last), upto, q.dtype)
        attended = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=True)
        logits, out = self.head.finish(attended, entries(hidden, last))
        for row in rows:
            self.cache.lengths[row.slot] = row.fed  # draft entries past it are overwritten next time
        slots = [row.slot for row in rows]
        return logits[slots, 0], out[slots, 0]

    def _pick(self, request: DraftRequest, row: HeadSlot, drafted: list[int], logits: torch.Tensor):  # noqa: ARG002
        """The next draft token after ``drafted`` from the head's draft ``logits`` [draft_vocab] (``chain.pick``).
        A greedy row's argmax and its probability read the same over the draft vocabulary (every other
        token's logit is -inf), so only a sampled row's logits are spread over the target's vocabulary."""
        if request.sampling.greedy:
            token, _, sure = pick(request, logits, None)
            return int(self.head.target_ids[token]), None, sure
        return pick(request, self.head.full_logits(logits), row.generator)

    def _new_row(self, seq_id: Hashable) -> HeadSlot:
        if len(self.rows) == self.max_rows:
            raise RuntimeError(f"proposer '{self.name}' holds {self.max_rows} rows already; rows must be "
                               "released when they finish")
        row = HeadSlot(seq_id, len(self.rows))
        self.rows.append(row)
        self.by_id[seq_id] = row
        return row
