"""Built-in plugin: ``draft_model``, a separate small causal LM that shares the target's tokenizer.

No smaller sibling of the default model is available here: ``specplug make-draft`` builds one from a
subset of the target's layers (optionally distilled) and writes it where configs/draft_model.yaml
points.
"""

from __future__ import annotations

from pathlib import Path

from specplug.models.loader import load_compact_model, load_tokenizer, parse_dtype
from specplug.models.llama import CompactLlama
from specplug.errors import ConfigError
from specplug.hookspecs import hookimpl
from specplug.metadata import ProposerContext
from specplug.proposers.layerskip import check_confidence
from specplug.proposers.model_drafter import ModelDrafter


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


def make_draft_model(context: ProposerContext, *, model: str = "", dtype: str | None = None,
                     confidence_threshold: float = 0.0) -> ModelDrafter:
    if not isinstance(model, str) or not model:
        raise ConfigError("proposer 'draft_model' needs proposer.model: the draft's HF directory "
                          "(see configs/draft_model.yaml)")
    check_confidence("draft_model", confidence_threshold)
    draft = load_draft(model, context, dtype)
    return ModelDrafter("draft_model", draft, None, context.max_batch_size, context.max_model_len,
                        context.num_speculative_tokens, confidence_threshold, enforce_eager=context.enforce_eager)


@hookimpl
def register_proposers(register):
    register.proposer("draft_model", make_draft_model)
