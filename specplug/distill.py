"""``specplug make-draft``: a draft model cut from the target's own layers, distilled on the target's text.

The draft keeps the target's embeddings, final norm, LM head and a subset of its layers. Distillation
minimises KL(target || draft) at every position of text the target sampled itself; embeddings and LM
head stay frozen, the kept layers and final norm train (fp32). The teacher's final hidden states are
computed once; its logits are ``lm_head(hidden)``. ``<out>/.make-draft-checkpoint.pt`` makes a run
resumable; the result is an HF directory plus ``specplug-draft.json`` (how it was made).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoConfig

from specplug.arguments import add_config_args
from specplug.config import Config, PluginChoice
from specplug.models.loader import load_hf_model, load_tokenizer, resolve_model
from specplug.errors import SpecplugError
from specplug.llm import LLM
from specplug.metadata import SamplingParams
from specplug.prompts import Prompt, encode_prompt
from specplug.proposers import draft_model, none

DEFAULT_NUM_LAYERS = 6
DEFAULT_DISTILL_STEPS = 120
DEFAULT_GEN_TOKENS = 128
BATCH_SIZE = 4  # sequences per step
LEARNING_RATE = 1e-3  # beat 3e-4 on held-out text for runs of 40-120 steps
CHECKPOINT_EVERY = 10  # steps
MAX_SEQUENCE_TOKENS = 512
CHECKPOINT_NAME = ".make-draft-checkpoint.pt"
METADATA_NAME = "specplug-draft.json"
PER_LAYER_CONFIG_LISTS = ("layer_types", "no_rope_layers")  # config lists with one entry per layer

DISTILL_PROMPTS = [
    "Write a haiku about autumn rain.", "Explain how a refrigerator keeps food cold.",
    "Give three tips for writing a good cover letter.", "What is the difference between weather and climate?",
    "Write a Python function that reverses a string.", "Summarise the plot of Romeo and Juliet in a few sentences.",
    "How do vaccines train the immune system?", "Suggest a simple recipe for a vegetarian dinner.",
    "Write a friendly email inviting a colleague to lunch.", "What causes the seasons on Earth?",
    "List five fun facts about octopuses.", "Explain what a prime number is, with examples.",
    "Describe a sunrise over the ocean.", "How can I improve my sleep?", "Explain the rules of chess briefly.",
    "Write a short poem about a cat watching birds.", "What are the benefits of regular exercise?",
    "Explain recursion to a beginner programmer.", "Why do leaves change colour in the fall?",
    "Write a product description for a reusable water bottle.", "How does a bill become a law in the United States?",
    "Give advice for someone starting their first job.", "What is photosynthesis?",
    "Tell me a short joke and explain why it is funny.",
]


def select_layers(num_target_layers: int, num_layers: int) -> list[int]:
    """``num_layers`` indices spread evenly over the target's layers, first and last included."""
    if not 1 <= num_layers <= num_target_layers:
        raise SpecplugError(f"--num-layers must be from 1 to {num_target_layers} (the target's layer count), "
                            f"got {num_layers}")
    if num_layers == 1:
        return [0]
    span, gaps = num_target_layers - 1, num_layers - 1
    return [(i * span + gaps // 2) // gaps for i in range(num_layers)]


def parse_layers(text: str) -> list[int]:
    """``--layers 0,4,8`` as ints (checked against the target by ``choose_layers``)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SpecplugError(f"--layers expects comma-separated layer indices like 0,4,8 (got '{text}')") from None


def choose_layers(num_target_layers: int, num_layers: int | None, layers: list[int] | None) -> list[int]:
    """``layers`` as given (checked), else ``num_layers`` (default ``DEFAULT_NUM_LAYERS``) spread evenly."""
    if num_layers is not None and layers is not None:
        raise SpecplugError("give either --num-layers or --layers, not both")
    if layers is None:
        return select_layers(num_target_layers, DEFAULT_NUM_LAYERS if num_layers is None else num_layers)
    bad = [i for i in layers if not 0 <= i < num_target_layers]
    if not layers or bad:
        raise SpecplugError(f"--layers: layer index {bad[0] if bad else '(none given)'} out of range: the target "
                            f"has layers 0 to {num_target_layers - 1}")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise SpecplugError(f"--layers must be strictly increasing, without repeats (got {layers})")
    return list(layers)


def build_draft(hf_target, layers: list[int]):
    """A model of the target's class holding target layer ``layers[i]`` as its layer i (weights copied)."""
    config = copy.deepcopy(hf_target.config)
    config.num_hidden_layers = len(layers)
    for name in PER_LAYER_CONFIG_LISTS:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and len(value) == hf_target.config.num_hidden_layers:
            setattr(config, name, [value[i] for i in layers])
    draft = type(hf_target)(config).to(hf_target.dtype)
    source = hf_target.state_dict()

    def target_key(key: str) -> str:
        match = re.match(r"(.*\.layers\.)(\d+)(\..*)", key)
        return f"{match[1]}{layers[int(match[2])]}{match[3]}" if match else key

    draft.load_state_dict({key: source[target_key(key)] for key in draft.state_dict()})  # copies
    draft.generation_config = copy.deepcopy(hf_target.generation_config)
    return draft.eval()


def generate_data(config: Config, prompts: list[Prompt], gen_tokens: int, seed: int) -> list[list[int]]:
    """Prompt + sampled continuation token ids for each prompt, generated by the target in the engine."""
    tokenizer = load_tokenizer(resolve_model(config.model))
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    length = min(config.max_model_len, max(map(len, encoded)) + gen_tokens + 1)  # no bigger a KV cache
    base = dataclasses.replace(config, proposer=PluginChoice(none.NAME), stop=(), max_model_len=length)
    sampler = LLM(base, max_batch_size=min(32, len(encoded))).variant(
        none.NAME, sampling=SamplingParams(0.8, 50, 1.0, seed))
    with tqdm(total=len(encoded), desc="generating", unit="prompt", file=sys.stderr) as bar:
        def on_step(output) -> None:
            if output.finish_reason is not None:
                bar.update(1)

        done = sampler.generate_ids(encoded, gen_tokens, on_step=on_step)
    return [(ids + c.token_ids)[:MAX_SEQUENCE_TOKENS] for ids, c in zip(encoded, done)]


def final_hidden(model, sequences: list[list[int]]) -> torch.Tensor:
    """The final (normed) hidden state at every real position of ``sequences``: [tokens, hidden]."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]


@torch.no_grad()
def teacher_hidden(hf_target, sequences: list[list[int]]) -> list[torch.Tensor]:
    """The target's final hidden states per sequence (Llama-style: its logits are ``lm_head(hidden)``)."""
    hidden = [final_hidden(hf_target, sequences[i:i + BATCH_SIZE]) for i in range(0, len(sequences), BATCH_SIZE)]
    return [h.clone() for h in torch.cat(hidden).split([len(s) for s in sequences])]


def kl_divergence(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(target || draft), temperature 1."""
    draft_logp = F.log_softmax(draft_logits.float(), dim=-1)
    target_logp = F.log_softmax(target_logits.detach().float(), dim=-1)
    return F.kl_div(draft_logp, target_logp, log_target=True, reduction="batchmean")


@torch.no_grad()
def evaluate(draft, hf_target, sequences: list[list[int]]) -> dict[str, float]:
    """Mean KL(target || draft) and greedy (top-1) agreement over every position of ``sequences``."""
    head, kl, agree, tokens = hf_target.get_output_embeddings(), 0.0, 0, 0
    for start in range(0, len(sequences), BATCH_SIZE):
        batch = sequences[start:start + BATCH_SIZE]
        target_logits, draft_logits = head(final_hidden(hf_target, batch)), head(final_hidden(draft, batch))
        kl += float(kl_divergence(draft_logits, target_logits)) * len(target_logits)
        agree += int((draft_logits.argmax(-1) == target_logits.argmax(-1)).sum())
        tokens += len(target_logits)
    return {"kl": kl / tokens, "top1_agreement": agree / tokens}


def learning_rate(step: int, total: int) -> float:
    """Linear warm-up over the first 10% of steps (at most 20), then cosine down to a tenth."""
    warmup = max(1, min(20, total // 10))
    if step < warmup:
        return LEARNING_RATE * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return LEARNING_RATE * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def batch_indices(step: int, count: int, seed: int) -> list[int]:
    """The sequences of a step: a seeded shuffle per epoch, so that a resumed run sees the same order."""
    epoch, offset = divmod(step, math.ceil(count / BATCH_SIZE))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[offset * BATCH_SIZE:(offset + 1) * BATCH_SIZE]


def trainable_parameters(draft) -> dict[str, torch.nn.Parameter]:
    """Everything but the embeddings and LM head (tied in small models, and most of the weights)."""
    frozen = {id(draft.get_input_embeddings().weight), id(draft.get_output_embeddings().weight)}
    for param in draft.parameters():
        param.requires_grad_(id(param) not in frozen)
    return {name: p for name, p in draft.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, state: dict[str, Any], params, optimizer, step: int, losses) -> None:
    state.update(step=step, losses=list(losses), optimizer=optimizer.state_dict(),
                 weights={name: p.detach().clone() for name, p in params.items()})
    torch.save(state, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def load_checkpoint(path: Path, key: dict[str, Any], log) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    if state.get("key") != key:
        print(f"specplug: {path} was made for another target, layer list or data; starting afresh", file=log)
        return None
    print(f"specplug: resuming from {path} at step {state['step']}", file=log, flush=True)
    return state


def distill(draft, hf_target, state: dict[str, Any], steps: int, checkpoint: Path, seed: int) -> list[float]:
    """Train up to step ``steps`` from ``state['step']``, checkpointing; returns the loss of every step."""
    params = trainable_parameters(draft)
    optimizer = torch.optim.AdamW(params.values(), lr=LEARNING_RATE, weight_decay=0.0)
    if "weights" in state:
        draft.load_state_dict(state["weights"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
    head, sequences, teacher = hf_target.get_output_embeddings(), state["sequences"], state["teacher"]
    losses, step = list(state.get("losses", [])), state.get("step", 0)
    draft.train()
    try:
        with tqdm(total=steps, initial=step, desc="distilling", unit="step", file=sys.stderr) as bar:
            while step < steps:
                chosen = batch_indices(step, len(sequences), seed)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, steps)
                with torch.no_grad():
                    target_logits = head(torch.cat([teacher[i] for i in chosen]))
                loss = kl_divergence(head(final_hidden(draft, [sequences[i] for i in chosen])), target_logits)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
                optimizer.step()
                losses.append(loss.item())
                step += 1
                bar.set_postfix(kl=f"{losses[-1]:.3f}")
                bar.update(1)
                if step % CHECKPOINT_EVERY == 0 or step == steps:
                    save_checkpoint(checkpoint, state, params, optimizer, step, losses)
    except KeyboardInterrupt:
        save_checkpoint(checkpoint, state, params, optimizer, step, losses)
        print(f"\nspecplug: interrupted; progress kept in {checkpoint}: run again to resume", file=sys.stderr)
        raise
    draft.eval()
    return losses


def make_draft(config: Config, out: str | Path, layers: list[int] | None = None, num_layers: int | None = None,
               steps: int = DEFAULT_DISTILL_STEPS, gen_tokens: int = DEFAULT_GEN_TOKENS,
               prompts: list[Prompt] | None = None, keep_checkpoint: bool = False, log=sys.stderr,
               hf_target=None) -> dict[str, Any]:
    """Build (and distil) a draft of ``config.model`` into ``out``; returns what specplug-draft.json holds.

    ``hf_target``: the target's HF model in fp32 when the caller has it loaded already.
    """
    if steps < 0 or gen_tokens < 1:
        raise SpecplugError(f"--distill-steps must be >= 0 and --gen-tokens >= 1 (got {steps}, {gen_tokens})")
    model_dir = resolve_model(config.model)
    total = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    layers = choose_layers(total, num_layers, layers)
    if config.threads:
        torch.set_num_threads(config.threads)
    hf_target = hf_target or load_hf_model(model_dir, torch.float32)
    draft = build_draft(hf_target, layers)
    out, seed = Path(out), config.seed if config.seed is not None else 0
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    info: dict[str, Any] = {"target_model": config.model, "target_dir": str(model_dir), "target_layers": total,
                            "layers": layers, "distill_steps": 0, "resumed_from_step": None,
                            "initial_loss": None, "final_loss": None, "train_tokens": 0}
    if steps > 0:
        prompts = prompts or [[{"role": "user", "content": p}] for p in DISTILL_PROMPTS]
        key = {"target": str(Path(model_dir).resolve()), "layers": layers, "gen_tokens": gen_tokens,
               "prompts": json.dumps(prompts), "seed": seed}
        state = load_checkpoint(checkpoint, key, log)
        if state is None:
            print(f"specplug: the target generates {gen_tokens} tokens for each of {len(prompts)} prompts",
                  file=log, flush=True)
            sequences = generate_data(config, prompts, gen_tokens, seed)
            state = {"key": key, "sequences": sequences, "teacher": teacher_hidden(hf_target, sequences)}
        else:
            info["resumed_from_step"] = state["step"]
        losses = distill(draft, hf_target, state, max(steps, state.get("step", 0)), checkpoint, seed)
        last = losses[-10:]
        info.update(distill_steps=len(losses), initial_loss=losses[0], final_loss=sum(last) / len(last),
                    train_tokens=sum(len(s) for s in state["sequences"]))
    draft.save_pretrained(out)
    load_tokenizer(model_dir).save_pretrained(out)
    (out / METADATA_NAME).write_text(json.dumps(info, indent=2) + "\n")
    if steps > 0 and not keep_checkpoint:
        checkpoint.unlink(missing_ok=True)
    return info


def configure(parser) -> None:
    """``specplug make-draft``'s arguments."""
    add_config_args(parser, max_new_tokens=False)
    parser.add_argument("--num-layers", type=int,
                        help=f"target layers to keep, spread evenly (default {DEFAULT_NUM_LAYERS})")
    parser.add_argument("--layers", help="exact target layers to keep, e.g. 0,4,8 (instead of --num-layers)")
    parser.add_argument("--distill-steps", type=int, default=DEFAULT_DISTILL_STEPS,
                        help="distillation steps of 4 sequences (default %(default)s; 0: the layer subset only)")
    parser.add_argument("--gen-tokens", type=int, default=DEFAULT_GEN_TOKENS,
                        help="tokens the target generates per prompt (default %(default)s)")
    parser.add_argument("--prompts-file", help="JSONL prompts to generate the training text from "
                                               f"(default: a built-in set of {len(DISTILL_PROMPTS)})")
    parser.add_argument("--out", help="output HF directory (default: proposer.model of a draft_model config)")


def run_command(args) -> int:
    """``specplug make-draft`` (registered by the draft_model plugin)."""
    from specplug.config import load_config
    from specplug.prompts import read_prompts_file

    config = load_config(args.config, args.overrides)
    out = args.out
    if out is None:
        if config.proposer.name != draft_model.NAME or not config.proposer.options.get("model"):
            raise SpecplugError(f"--out is needed: the config's proposer is '{config.proposer.name}', not "
                                "draft_model with a proposer.model path to write to")
        out = config.proposer.options["model"]
    info = make_draft(config, out, layers=None if args.layers is None else parse_layers(args.layers),
                      num_layers=args.num_layers,
                      steps=args.distill_steps, gen_tokens=args.gen_tokens,
                      prompts=read_prompts_file(args.prompts_file) if args.prompts_file else None)
    loss = "" if info["final_loss"] is None else f", training KL {info['initial_loss']:.3f} -> {info['final_loss']:.3f}"
    print(f"draft with target layers {info['layers']} written to {out} "
          f"({info['distill_steps']} distillation steps{loss})")
    return 0
