"""``specplug_trtllm.Drafter``: the configured specplug proposer as TensorRT-LLM's user-provided drafter.

Upstream contract (tensorrt_llm/_torch/speculative/drafter.py, 1.1 and 1.2): ``Drafter`` is abstract
with ``prepare_draft_tokens(scheduled_requests, resource_manager=None)``, called once per iteration
before the target forward; it sets each generation request's ``py_draft_tokens`` (and, for rejection
sampling, ``py_draft_logits``). 1.0/1.1 construct it as ``__init__(max_concurrency=None)``, 1.2 as
``__init__(max_draft_len, max_total_draft_tokens, max_concurrency, draft_len_schedule)``: detected by
signature. The base class's ``should_use_spec_decode`` turns drafting off above ``max_concurrency``.
Without TensorRT-LLM the class still imports (its base is then ``object``) and constructing it is one
clear error.
"""

from __future__ import annotations

import inspect
import logging

import numpy as np

from specplug.hosting.building import EngineShape, StrategyBuilder
from specplug.hosting.faults import PluginFaults
from specplug.hosting.live import LiveTable
from specplug.hosting.stats import DraftStats
from specplug.hosting.token_rows import BatchView, TokenRows
from specplug.metadata import Draft, SamplingParams
from specplug.plugins import load_registry
from specplug_trtllm.install import require_tensorrt_llm
from specplug_trtllm.logits import pad_logits, probs_to_logits

try:
    from tensorrt_llm._torch.speculative.drafter import Drafter as _Upstream
except ImportError:  # TensorRT-LLM is not installed: the class imports, constructing it says why not
    _Upstream = None

logger = logging.getLogger("specplug.trtllm")


def request_sampling(request) -> SamplingParams:
    """The request's sampling (LlmRequest.sampling_config holds one-element lists or None)."""
    config = getattr(request, "sampling_config", None)

    def first(name):
        value = getattr(config, name, None)
        return value[0] if isinstance(value, (list, tuple)) and value else value

    temperature, top_k, top_p, seed = first("temperature"), first("top_k"), first("top_p"), first("random_seed")
    greedy = (temperature is None and top_k is None and top_p is None) or temperature == 0 or top_k == 1
    return SamplingParams(0.0 if greedy else float(temperature or 1.0), int(top_k or 0), float(top_p or 1.0),
                          None if seed is None else int(seed))


class Drafter(_Upstream or object):
    def __init__(self, config_path: str | None, shape: EngineShape, max_concurrency: int | None = None,
                 draft_len_schedule: dict[int, int] | None = None, cuda_graph_padding: bool = False):
        if _Upstream is None:
            require_tensorrt_llm()
        self._args = (config_path, shape, max_concurrency, draft_len_schedule, cuda_graph_padding)
        self.config_path, self.shape, self.cuda_graph_padding = config_path, shape, cuda_graph_padding
        builder = StrategyBuilder(shape, load_registry(), keeps_draft_probs=True, log=logger,
                                  packed=not cuda_graph_padding)  # padded drafts cost the widest row's tokens
        self.live = LiveTable.from_file(builder.table, config_path)
        self.stats = DraftStats(self.live.config.source, self.live.table.default_name, logger)
        self.rows = TokenRows(shape.max_model_len, shape.vocab_size, shape.max_k, self.stats, PluginFaults(logger))
        self.prefilled = False  # the last iteration scheduled context requests (its step time is not a verify's)
        self.stats.report(force=True)
        init_upstream(self, shape.max_k, max_concurrency, draft_len_schedule)

    def __reduce__(self):
        """Workers rebuild the drafter from its config file: a live proposer is never pickled."""
        return Drafter, self._args

    @property
    def strategy(self):
        """The default strategy (what every request drafts with: TensorRT-LLM requests name none)."""
        return self.live.table.default

    # ---- one iteration ------------------------------------------------------------------------
    def prepare_draft_tokens(self, scheduled_requests, resource_manager=None) -> None:
        generation = list(scheduled_requests.generation_requests)
        batch = self._batch(generation, self.prefilled)
        self.prefilled = bool(scheduled_requests.context_requests)
        rows = self.rows.observe(self.live.table, batch)
        self._swap_if_changed()
        drafts = self.rows.draft(self.live.table, batch, rows)
        for request, sampling, draft in zip(generation, batch.sampling, drafts):
            self._hand_over(request, sampling, draft)
        if self.cuda_graph_padding:
            self._pad(scheduled_requests, resource_manager)
        self.stats.report()

    def _batch(self, generation: list, prefilled: bool) -> BatchView:
        """The generation requests as token rows: what each emitted since it was last drafted for."""
        tokens = [list(r.get_tokens(0)) for r in generation]
        width = max(map(len, tokens), default=0)
        token_ids = np.zeros((len(tokens), width), dtype=np.int64)
        sampled, limits = [], []
        for i, (request, row) in enumerate(zip(generation, tokens)):
            token_ids[i, : len(row)] = row
            prompt = int(getattr(request, "py_orig_prompt_len", None) or request.py_prompt_len)
            seen = self.rows.seen_length(request.py_request_id)
            sampled.append(row[prompt if seen is None else seen:] or row[-1:])
            remaining = int(request.py_max_new_tokens) - (len(row) - prompt) - 1  # the target adds one
            limits.append(min(self.draft_limit(), remaining, self.shape.max_model_len - len(row) - 1))
        return BatchView(sampled, np.array([len(t) for t in tokens]), token_ids,
                         [r.py_request_id for r in generation], None, limits,
                         [request_sampling(r) for r in generation], prefilled, calls_before_step=True)

    def _swap_if_changed(self) -> None:
        old = self.live.table.default_name
        new, refused = self.live.poll()
        if refused is not None:
            logger.error("specplug: %s", refused)
            self.stats.reject(self.config_path, refused)
        if new is None:
            return
        in_flight = self.rows.hand_over(new)
        logger.info("specplug: switched proposer '%s' -> '%s' (k=%d) with %d requests in flight", old,
                    new.default_name, new.default.k, in_flight)
        self.stats.swapped(old, new.default_name, self.live.config.source, in_flight)

    def draft_limit(self) -> int:
        """The most tokens a request may draft now: the strategy's k, within TensorRT-LLM's current
        ``max_draft_len`` (1.2 lowers it by ``draft_len_schedule`` as the batch grows)."""
        upstream = getattr(self, "max_draft_len", None)
        return self.shape.max_k if upstream is None else min(self.shape.max_k, int(upstream))

    def _hand_over(self, request, sampling: SamplingParams, draft: Draft) -> None:
        request.py_draft_tokens = [int(t) for t in draft.token_ids]
        keep_logits = draft.probs is not None and not sampling.greedy and sampling.top_p >= 1.0
        request.py_draft_logits = probs_to_logits(draft.probs, sampling.temperature) if keep_logits else None

    def _pad(self, scheduled_requests, resource_manager) -> None:
        """TensorRT-LLM's own padding to the static draft length (CUDA graphs); logits rows follow."""
        pad = getattr(self, "pad_draft_tokens_for_cuda_graph", None)
        if pad is None:
            return
        takes_manager = "resource_manager" in inspect.signature(pad).parameters
        pad(scheduled_requests, resource_manager) if takes_manager else pad(scheduled_requests)
        for request in scheduled_requests.generation_requests:
            if request.py_draft_logits is not None:
                request.py_draft_logits = pad_logits(request.py_draft_logits, len(request.py_draft_tokens))


def init_upstream(drafter: Drafter, max_k: int, max_concurrency: int | None,
                  draft_len_schedule: dict[int, int] | None) -> None:
    """Call TensorRT-LLM's constructor in whichever form this release has."""
    if _Upstream is None:
        return
    parameters = inspect.signature(_Upstream.__init__).parameters
    if "max_draft_len" in parameters:  # 1.2+
        _Upstream.__init__(drafter, max_draft_len=max_k, max_total_draft_tokens=max_k,
                           max_concurrency=max_concurrency, draft_len_schedule=draft_len_schedule)
        return
    if draft_len_schedule:
        logger.warning("specplug: this TensorRT-LLM's Drafter has no draft_len_schedule (1.2+); it is ignored")
    _Upstream.__init__(drafter, max_concurrency=max_concurrency)
