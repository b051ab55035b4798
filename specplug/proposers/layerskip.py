"""Built-in plugin: ``layerskip``, self-speculation: the target drafts for itself with sub-layers skipped.

Options choose the skip set as in Draft & Verify (attention and/or MLP of given layers) or an early
exit at layer E as in LayerSkip. The draft shares the target's weights (no second copy) and keeps its
own KV cache, whose skipped layers stay empty; the verify pass runs every layer on all k + 1 positions.
"""

from __future__ import annotations

from collections.abc import Sequence

from specplug.models.llama import CompactLlama, LayerPlan
from specplug.errors import ConfigError
from specplug.hookspecs import hookimpl
from specplug.metadata import ProposerContext
from specplug.proposers.model_drafter import ModelDrafter


def layer_plan(num_layers: int, skip_layers: Sequence[int] = (), skip_attention: Sequence[int] = (),
               skip_mlp: Sequence[int] = (), exit_layer: int | None = None) -> LayerPlan:
    """The draft's LayerPlan, with every index checked against the model's ``num_layers``."""
    for option, indices in (("skip_layers", skip_layers), ("skip_attention", skip_attention),
                            ("skip_mlp", skip_mlp)):
        if not isinstance(indices, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers for i in indices):
            raise ConfigError(f"proposer 'layerskip': {option} must be a list of layer indices in "
                              f"0..{num_layers - 1} (got {indices!r})")
    if exit_layer is not None and not (isinstance(exit_layer, int) and 1 <= exit_layer < num_layers):
        raise ConfigError(f"proposer 'layerskip': exit_layer must be an integer in 1..{num_layers - 1} "
                          f"(got {exit_layer!r}); leave it out for no early exit")
    plan = LayerPlan.skipping(num_layers, [*skip_layers, *skip_attention], [*skip_layers, *skip_mlp],
                              exit_layer)
    if plan.skipped_fraction == 0:
        raise ConfigError("proposer 'layerskip' skips nothing: set skip_layers, skip_attention, skip_mlp "
                          "or exit_layer (or run `specplug tune layerskip` to choose them)")
    return plan


def make_layerskip(context: ProposerContext, *, skip_layers: Sequence[int] = (),
                   skip_attention: Sequence[int] = (), skip_mlp: Sequence[int] = (),
                   exit_layer: int | None = None, confidence_threshold: float = 0.0) -> ModelDrafter:
    target = context.target_model()
    if not isinstance(target, CompactLlama):
        raise ConfigError("proposer 'layerskip' drafts with the target's own weights and needs the engine "
                          "to share them (the embedded engine does; the vLLM adapter loads a copy)")
    check_confidence("layerskip", confidence_threshold)
    plan = layer_plan(target.shape.num_layers, skip_layers, skip_attention, skip_mlp, exit_layer)
    return ModelDrafter("layerskip", target, plan, context.max_batch_size, context.max_model_len,
                        context.num_speculative_tokens, confidence_threshold, enforce_eager=context.enforce_eager)


def check_confidence(name: str, threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise ConfigError(f"proposer '{name}': confidence_threshold must be in [0, 1) (got {threshold!r}); "
                          "0 turns the early stop off")


@hookimpl
def register_proposers(register):
    register.proposer("layerskip", make_layerskip)
