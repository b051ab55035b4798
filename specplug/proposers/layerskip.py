"""Built-in plugin: ``layerskip``, self-speculation: the target drafts for itself with sub-layers skipped.

Options choose the skip set as in Draft & Verify (attention and/or MLP of given layers) or an early
exit at layer E as in LayerSkip. The draft shares the target's weights (no second copy) and keeps its
own KV cache, whose skipped layers stay empty; the verify pass runs every layer on all k + 1 positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from specplug.errors import ConfigError
from specplug.hookspecs import hookimpl
from specplug.metadata import ProposerContext
from specplug.models.llama import CompactLlama, LayerPlan
from specplug.options import option
from specplug.proposers.model_drafter import ModelDrafter
from specplug.registry import ProposerCapabilities

NAME = "layerskip"


def layer_plan(num_layers: int, skip_layers: Sequence[int] = (), skip_attention: Sequence[int] = (),
               skip_mlp: Sequence[int] = (), exit_layer: int | None = None) -> LayerPlan:
    """The draft's LayerPlan, with every index checked against the model's ``num_layers`` (the option
    schema has checked the types; the bound depends on the model)."""
    for name, indices in (("skip_layers", skip_layers), ("skip_attention", skip_attention),
                          ("skip_mlp", skip_mlp)):
        if any(i >= num_layers for i in indices):
            raise ConfigError(f"proposer 'layerskip': {name} must be a list of layer indices in "
                              f"0..{num_layers - 1} (got {list(indices)!r})")
    if exit_layer is not None and exit_layer >= num_layers:
        raise ConfigError(f"proposer 'layerskip': exit_layer must be an integer in 1..{num_layers - 1} "
                          f"(got {exit_layer!r}); leave it out for no early exit")
    plan = LayerPlan.skipping(num_layers, [*skip_layers, *skip_attention], [*skip_layers, *skip_mlp],
                              exit_layer)
    if plan.skipped_fraction == 0:
        raise ConfigError("proposer 'layerskip' skips nothing: set skip_layers, skip_attention, skip_mlp "
                          "or exit_layer (or run `specplug tune layerskip` to choose them)")
    return plan


CONFIDENCE_HELP = "stop drafting a row once the draft's probability of its next token falls below this (0: off)"


@dataclass(frozen=True)
class LayerskipOptions:
    skip_layers: list[int] = option([], "layers whose attention and MLP the draft skips", ge=0)
    skip_attention: list[int] = option([], "layers whose attention only the draft skips", ge=0)
    skip_mlp: list[int] = option([], "layers whose MLP only the draft skips", ge=0)
    exit_layer: int | None = option(None, "the draft stops after this many layers (early exit)", ge=1)
    confidence_threshold: float = option(0.0, CONFIDENCE_HELP, ge=0, lt=1)


def make_layerskip(context: ProposerContext, options: LayerskipOptions) -> ModelDrafter:
    target = context.target_model()
    if not isinstance(target, CompactLlama):
        raise ConfigError("proposer 'layerskip' drafts with the target's own weights and needs the engine "
                          "to share them (the embedded engine does; the vLLM adapter loads a copy)")
    plan = layer_plan(target.shape.num_layers, options.skip_layers, options.skip_attention, options.skip_mlp,
                      options.exit_layer)
    return ModelDrafter(NAME, target, plan, context.max_batch_size, context.max_model_len,
                        context.num_speculative_tokens, options.confidence_threshold,
                        enforce_eager=context.enforce_eager)


@hookimpl
def register_commands(register):
    register.tuner(NAME, "choose the layerskip skip set by Bayesian optimisation on measured tok/s",
                   "specplug.tune:configure", "specplug.tune:run_command")


@hookimpl
def register_proposers(register):
    register.proposer(NAME, make_layerskip, options=LayerskipOptions,
                      capabilities=ProposerCapabilities(draft_probs=True, needs_target=True, stateful=True))
