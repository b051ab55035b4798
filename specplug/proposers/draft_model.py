"""Built-in plugin: ``draft_model``, a separate small causal LM that shares the target's tokenizer.

No smaller sibling of the default model is available here: ``specplug make-draft`` builds one from a
subset of the target's layers (optionally distilled) and writes it where configs/draft_model.yaml
points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specplug.errors import ConfigError
from specplug.hookspecs import hookimpl
from specplug.metadata import ProposerContext
from specplug.models.llama import CompactLlama
from specplug.models.loader import load_compact_model, load_tokenizer, parse_dtype
from specplug.options import option
from specplug.proposers.layerskip import CONFIDENCE_HELP
from specplug.proposers.model_drafter import ModelDrafter
from specplug.registry import ProposerCapabilities

NAME = "draft_model"


def load_draft(model: str, context: ProposerContext, dtype: str | None) -> CompactLlama:
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"draft model '{model}' not found (proposer.model); build one with "
            f"`specplug make-draft --config <this config>` (it writes to proposer.model), or point "
            f"proposer.model at an HF directory of a model that shares the target's tokenizer"
        )
    check_same_vocabulary(model, load_tokenizer(path), context)
    target_dtype = getattr(context.target, "dtype", None)
    torch_dtype = parse_dtype(dtype) if dtype else target_dtype or parse_dtype("float32")
    draft = load_compact_model(path, torch_dtype, context.device)
    if draft.shape.vocab_size != context.vocab_size:
        raise ConfigError(f"draft model '{model}' has {draft.shape.vocab_size} output tokens, the target "
                          f"{context.vocab_size}: a draft must share the target's vocabulary")
    return draft


def check_same_vocabulary(model: str, draft_tokenizer, context: ProposerContext) -> None:
    target_tokenizer = context.tokenizer
    if target_tokenizer is None:
        return
    if draft_tokenizer.get_vocab() != target_tokenizer.get_vocab():
        raise ConfigError(
            f"tokenizer mismatch: draft model '{model}' ({len(draft_tokenizer)} tokens) does not share the "
            f"target's tokenizer ({len(target_tokenizer)} tokens); use a draft from the same model family, "
            "or build one with `specplug make-draft`"
        )


@dataclass(frozen=True)
class DraftModelOptions:
    model: str = option(help="the draft's HF directory (same tokenizer as the target; `specplug make-draft` "
                             "builds one)")
    dtype: str | None = option(None, "the draft's dtype (default: the target's)",
                               choices=("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"))
    confidence_threshold: float = option(0.0, CONFIDENCE_HELP, ge=0, lt=1)


def make_draft_model(context: ProposerContext, options: DraftModelOptions) -> ModelDrafter:
    draft = load_draft(options.model, context, options.dtype)
    return ModelDrafter(NAME, draft, None, context.max_batch_size, context.max_model_len,
                        context.num_speculative_tokens, options.confidence_threshold,
                        enforce_eager=context.enforce_eager)


@hookimpl
def register_commands(register):
    register.command("make-draft", "build a draft model from a subset of the target's layers, distilled on text "
                     "the target generates", "specplug.distill:configure",
                     "specplug.distill:run_command")


@hookimpl
def register_proposers(register):
    register.proposer(NAME, make_draft_model, options=DraftModelOptions,
                      capabilities=ProposerCapabilities(draft_probs=True, stateful=True))
