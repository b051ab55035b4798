"""Training an EAGLE-3 head on the target's own answers (``specplug make-eagle3``).

Training-time test, as EAGLE-3: step 0 feeds the target's features at every position (entry i: features
at i, token i + 1, predicting token i + 2); step j feeds step j - 1's hidden outputs, attending to the real
entries up to its chain's start and to its own chain's earlier steps, exactly what drafting j + 1 tokens
sees. Step j's loss weighs 0.8^j. Held-out acceptance per position is measured the same way: the share
of answer positions where the head's first j drafts all equal the target's greedy tokens (which is what
greedy verification accepts, since the data is the target's greedy decoding).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from specplug.eagle3_data import Sample
from specplug.models.eagle3 import Eagle3Head, HeadShape

STEP_WEIGHT = 0.8
CHECKPOINT_EVERY = 50  # optimizer steps


def draft_vocabulary(samples: list[Sample], size: int, vocab_size: int) -> torch.Tensor:
    """The ``size`` target tokens most frequent in the answers, as d2t offsets (draft id d -> d + d2t[d])."""
    counts = Counter(t for s in samples for t in s.token_ids[s.num_prompt_tokens:])
    chosen = [t for t, _ in counts.most_common(size)]
    chosen += [t for t in range(vocab_size) if t not in set(chosen)][: size - len(chosen)]
    chosen = torch.tensor(sorted(chosen))
    return chosen - torch.arange(len(chosen))


def new_head(hf_target, shape: HeadShape, d2t: torch.Tensor) -> Eagle3Head:
    """A head initialised from the target's last layer (attention over the hidden half of its input), its
    final norm and its LM head's rows of the draft vocabulary; ``fc`` starts by passing the last features."""
    head = Eagle3Head(shape, d2t)
    last, h = hf_target.model.layers[-1], shape.hidden
    with torch.no_grad():
        for name, source in (("q_proj", last.self_attn.q_proj), ("k_proj", last.self_attn.k_proj),
                             ("v_proj", last.self_attn.v_proj)):
            getattr(head, name)[:, h:] = source.weight
            getattr(head, name)[:, :h] *= 0.1
        for name, source in (("o_proj", last.self_attn.o_proj), ("gate_proj", last.mlp.gate_proj),
                             ("up_proj", last.mlp.up_proj), ("down_proj", last.mlp.down_proj)):
            getattr(head, name).copy_(source.weight)
        head.hidden_norm.copy_(last.input_layernorm.weight)
        head.post_norm.copy_(last.post_attention_layernorm.weight)
        head.norm.copy_(hf_target.model.norm.weight)
        head.lm_head.copy_(hf_target.lm_head.weight[head.target_ids])
        head.fc.zero_()
        head.fc[:, -h:] = torch.eye(h)
    return head


def unrolled(head: Eagle3Head, embed: torch.Tensor, features: torch.Tensor, tokens: torch.Tensor,
             steps: int) -> list[torch.Tensor]:
    """Draft logits of each training-time-test step: [steps] x [B, N, draft_vocab], N = T - 1 chains.

    ``features`` [B, T - 1, F], ``tokens`` [B, T] (right-padded). Chain i of step j sits at position i + j,
    reads token i + j + 1 and predicts token i + j + 2."""
    batch, n = features.shape[0], features.shape[1]
    padded = F.pad(tokens, (0, steps))
    chains = torch.arange(n)
    hidden = head.project_features(features)
    keys, values, out = [], [], []
    causal = chains[None, :] <= chains[:, None]  # [N, N]
    for j in range(steps):
        positions = (chains + j).expand(batch, -1)
        q, k, v = head.qkv(F.embedding(padded[:, j + 1: j + 1 + n], embed), hidden, positions)
        keys.append(k)
        values.append(v)
        mask = torch.cat([causal] + [torch.eye(n, dtype=torch.bool)] * j, 1)
        attended = F.scaled_dot_product_attention(q, torch.cat(keys, 2), torch.cat(values, 2), attn_mask=mask,
                                                  enable_gqa=True)
        logits, hidden = head.finish(attended, hidden)
        out.append(logits)
    return out


def labels(head: Eagle3Head, batch: list[Sample], steps: int, width: int) -> torch.Tensor:
    """[steps, B, N] the draft id each step should predict, -1 where the token is out of the draft
    vocabulary and -2 where there is nothing to predict (past the end, or a prompt token)."""
    to_draft = torch.full((head.shape.vocab_size,), -1, dtype=torch.long)
    to_draft[head.target_ids.cpu()] = torch.arange(head.shape.draft_vocab_size)
    out = torch.full((steps, len(batch), width - 1), -2, dtype=torch.long)
    for b, sample in enumerate(batch):
        ids = torch.tensor(sample.token_ids)
        for j in range(steps):
            first = max(0, sample.num_prompt_tokens - j - 2)  # chains whose target is an answer token
            last = len(ids) - j - 2  # exclusive: the target token i + j + 2 must exist
            if last > first:
                out[j, b, first:last] = to_draft[ids[first + j + 2: last + j + 2]]
    return out


def collate(batch: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s.token_ids) for s in batch)
    tokens = torch.zeros((len(batch), width), dtype=torch.long)
    features = torch.zeros((len(batch), width - 1, batch[0].features.shape[1]))
    for b, s in enumerate(batch):
        tokens[b, : len(s.token_ids)] = torch.tensor(s.token_ids)
        features[b, : len(s.features)] = s.features.float()
    return features, tokens


def batches(samples: list[Sample], tokens_per_batch: int, rng: random.Random) -> list[list[Sample]]:
    """Samples of similar length together, about ``tokens_per_batch`` tokens a batch, in random order."""
    order = sorted(samples, key=lambda s: len(s.token_ids))
    out, current = [], []
    for sample in order:
        if current and (len(current) + 1) * len(sample.token_ids) > tokens_per_batch:
            out.append(current)
            current = []
        current.append(sample)
    out += [current] if current else []
    rng.shuffle(out)
    return out


def loss_of(head: Eagle3Head, embed: torch.Tensor, batch: list[Sample], steps: int) -> torch.Tensor:
    features, tokens = collate(batch)
    target = labels(head, batch, steps, tokens.shape[1])
    total = torch.zeros(())
    for j, logits in enumerate(unrolled(head, embed, features, tokens, steps)):
        keep = target[j] >= 0
        if keep.any():
            total = total + STEP_WEIGHT ** j * F.cross_entropy(logits[keep], target[j][keep])
    return total


@torch.no_grad()
def acceptance(head: Eagle3Head, embed: torch.Tensor, samples: list[Sample], steps: int) -> list[float]:
    """Held-out acceptance per position: the share of answer positions whose first j drafts all match."""
    hits, count = torch.zeros(steps), 0
    for batch in batches(samples, 4096, random.Random(0)):
        features, tokens = collate(batch)
        target = labels(head, batch, steps, tokens.shape[1])
        drafted = torch.stack([logits.argmax(-1) for logits in unrolled(head, embed, features, tokens, steps)])
        counted = (target > -2).all(0)  # chains with a target at every step
        running = torch.ones_like(counted)
        for j in range(steps):
            running = running & (drafted[j] == target[j])
            hits[j] += (running & counted).sum()
        count += int(counted.sum())
    return (hits / max(count, 1)).tolist()


def train(head: Eagle3Head, embed: torch.Tensor, samples: list[Sample], epochs: float, steps: int,
          checkpoint: Path, seed: int = 0, tokens_per_batch: int = 4096, learning_rate: float = 1e-3,
          log=sys.stderr) -> dict:
    """Train ``head`` in place (resuming from ``checkpoint`` when it holds a run of the same shape)."""
    rng = random.Random(seed)
    plan = [b for _ in range(math.ceil(epochs)) for b in batches(samples, tokens_per_batch, rng)]
    plan = plan[: max(1, round(len(plan) * epochs / math.ceil(epochs)))]
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=0.0)
    start, losses = 0, []
    if checkpoint.is_file():
        state = torch.load(checkpoint)
        if state["steps"] == len(plan):
            head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
            start, losses = state["step"], state["losses"]
    began = time.perf_counter()
    with tqdm(total=len(plan), initial=start, desc="training", unit="step", file=log) as bar:
        for step in range(start, len(plan)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / len(plan)))
            loss = loss_of(head, embed, plan[step], steps)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
            if (step + 1) % CHECKPOINT_EVERY == 0:
                torch.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1,
                            "steps": len(plan), "losses": losses}, checkpoint)
    return {"optimizer_steps": len(plan), "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
            "train_seconds": round(time.perf_counter() - began, 1)}
