"""Built-in plugin: ``eagle3``, an EAGLE-3 draft head that drafts from the target's own features.

Heads are in vLLM's EAGLE-3 layout, so one checkpoint serves the embedded engine, vLLM (its native
``eagle3`` method) and TensorRT-LLM. A head for the default model ships with specplug
(``specplug/heads/``); ``specplug make-eagle3`` trains one for any Llama-family target.
The host must hand the proposer the target's features (``Proposer.on_target_features``): the embedded
engine does; inside vLLM use vLLM's own ``eagle3`` method with the same checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specplug.errors import ConfigError
from specplug.hookspecs import hookimpl
from specplug.metadata import ProposerContext
from specplug.models.eagle3 import Eagle3Head
from specplug.options import option
from specplug.proposers.eagle3_drafter import Eagle3Drafter
from specplug.proposers.layerskip import CONFIDENCE_HELP
from specplug.registry import ProposerCapabilities

NAME = "eagle3"
SHIPPED_HEADS = Path(__file__).resolve().parent.parent / "heads"  # name -> SHIPPED_HEADS / name


def head_directory(head: str) -> Path:
    """A shipped head's directory by name, else ``head`` as a path."""
    shipped = SHIPPED_HEADS / head
    return shipped if (shipped / "config.json").is_file() else Path(head).expanduser()


def shipped_heads() -> list[str]:
    return sorted(p.name for p in SHIPPED_HEADS.glob("*") if (p / "config.json").is_file())


@dataclass(frozen=True)
class Eagle3Options:
    head: str = option("smollm2-135m-eagle3", "a head shipped with specplug by name (" + ", ".join(shipped_heads())
                       + ") or the directory of one in vLLM's EAGLE-3 layout (`specplug make-eagle3` trains one)")
    confidence_threshold: float = option(0.0, CONFIDENCE_HELP, ge=0, lt=1)


def make_eagle3(context: ProposerContext, options: Eagle3Options) -> Eagle3Drafter:
    target = context.target_model()
    if target is None:
        raise ConfigError("eagle3 drafts from the target's features, which this engine does not hand out; inside "
                          "vLLM serve the same head with vLLM's own eagle3 method (docs/vllm.md)")
    head = Eagle3Head.load(head_directory(options.head), target.dtype, target.device)
    check_fits_target(options.head, head, target)
    head.use_kernels(target.kernels)
    return Eagle3Drafter(NAME, head, target.embed, context.max_batch_size, context.max_model_len,
                         context.num_speculative_tokens, options.confidence_threshold)


def check_fits_target(name: str, head: Eagle3Head, target) -> None:
    s, t = head.shape, target.shape
    if (s.vocab_size, s.hidden) != (t.vocab_size, t.hidden):
        raise ConfigError(f"EAGLE-3 head '{name}' was made for a target of {s.vocab_size} tokens and width {s.hidden}; "
                          f"this target has {t.vocab_size} and {t.hidden}: train a head for it with "
                          "`specplug make-eagle3`")
    if not all(0 <= layer <= t.num_layers for layer in s.layers):
        raise ConfigError(f"EAGLE-3 head '{name}' reads target layers {list(s.layers)}; this target has "
                          f"{t.num_layers}")


def vllm_speculative_config(options: dict, k: int) -> dict:
    """vLLM's own ``eagle3`` method with the same head (``specplug_vllm.flags`` prints it)."""
    head = options.get("head", Eagle3Options.head)
    return {"method": "eagle3", "model": str(head_directory(head)), "num_speculative_tokens": k}


def trtllm_decoding_config(options: dict, k: int) -> tuple[str, dict]:
    """TensorRT-LLM's ``Eagle3DecodingConfig`` keywords for the same head. TensorRT-LLM numbers the captured
    layers by the layer whose output it takes, one below vLLM's (whose numbers are the layer it enters)."""
    directory = head_directory(options.get("head", Eagle3Options.head))
    layers = Eagle3Head.shape_of(directory).layers
    return "Eagle3DecodingConfig", {"max_draft_len": k, "speculative_model": str(directory), "eagle3_one_model": True,
                                    "eagle3_layers_to_capture": {layer - 1 for layer in layers}}


@hookimpl
def register_commands(register):
    register.command("make-eagle3", "train an EAGLE-3 head on the target's own answers (vLLM's layout)",
                     "specplug.eagle3_command:configure", "specplug.eagle3_command:run_command")


@hookimpl
def register_proposers(register):
    register.proposer(NAME, make_eagle3, options=Eagle3Options,
                      capabilities=ProposerCapabilities(draft_probs=True, needs_target=True, stateful=True))
