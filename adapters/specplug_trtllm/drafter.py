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
from dataclasses import dataclass

from specplug.metadata import Draft, DraftRequest, SamplingParams
from specplug.proposers.base import check_drafts
from specplug_trtllm.install import require_tensorrt_llm
from specplug_trtllm.logits import pad_logits, probs_to_logits
from specplug_vllm.strategy import EngineShape, StrategyBuilder, refresh, verified
from specplug.config import ConfigWatcher

try:
    from tensorrt_llm._torch.speculative.drafter import Drafter as _Upstream
except ImportError:  # TensorRT-LLM is not installed: the class imports, constructing it says why not
    _Upstream = None

logger = logging.getLogger("specplug.trtllm")


@dataclass
class Seen:
    """What the drafter keeps of one request between iterations."""

    k: int  # this request's draft budget (moves only with adaptive_k)
    length: int = 0  # its tokens when it was last drafted for
    num_draft: int = 0  # tokens drafted for it then


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
        self.watcher = ConfigWatcher(config_path) if config_path else None  # before the file is read
        self.builder = StrategyBuilder(shape, keeps_draft_probs=True)
        self.strategy = self.builder.build(config_path)
        self.seen: dict[int, Seen] = {}
        init_upstream(self, shape.max_k, max_concurrency, draft_len_schedule)

    def __reduce__(self):
        """Workers rebuild the drafter from its config file: a live proposer is never pickled."""
        return Drafter, self._args

    # ---- one iteration ------------------------------------------------------------------------
    def prepare_draft_tokens(self, scheduled_requests, resource_manager=None) -> None:
        generation = list(scheduled_requests.generation_requests)
        self._forget_unscheduled({r.py_request_id for r in [*scheduled_requests.context_requests, *generation]})
        self._report_verified(generation)
        self._swap_if_changed()
        requests = [self._draft_request(r) for r in generation]
        drafts = [Draft([]) for _ in requests]
        if any(r.max_draft_tokens for r in requests):
            drafts = self.strategy.proposer.propose(requests)
            check_drafts(self.strategy.proposer, requests, drafts, self.shape.vocab_size)
        for request, draft_request, draft in zip(generation, requests, drafts):
            self._hand_over(request, draft_request, draft)
        if self.cuda_graph_padding:
            self._pad(scheduled_requests, resource_manager)

    def _forget_unscheduled(self, scheduled: set) -> None:
        """Release requests that finished or left the schedule (their state is rebuilt if they return)."""
        for request_id in [i for i in self.seen if i not in scheduled]:
            del self.seen[request_id]
            self.strategy.proposer.release(request_id)

    def _report_verified(self, generation: list) -> None:
        outcomes = []
        for request in generation:
            seen = self.seen.get(request.py_request_id)
            if seen is None or not seen.num_draft:
                continue
            accepted = min(int(getattr(request, "py_num_accepted_draft_tokens", 0)), seen.num_draft)
            emitted = tuple(int(t) for t in request.get_tokens(0)[seen.length:])
            outcomes.append(verified(seen, request.py_request_id, accepted, emitted, self.strategy))
        if outcomes:
            self.strategy.proposer.on_verified(outcomes)

    def _swap_if_changed(self) -> None:
        new, message = refresh(self.builder, self.config_path, self.watcher)
        if message is not None:
            logger.error("specplug: rejected the new %s (%s); still running proposer '%s'", self.config_path,
                         message, self.strategy.name)
        if new is None:
            return
        for request_id, seen in self.seen.items():
            self.strategy.proposer.release(request_id)
            seen.k, seen.num_draft = new.k, 0
        logger.info("specplug: switched proposer '%s' -> '%s' (k=%d) with %d requests in flight",
                    self.strategy.name, new.name, new.k, len(self.seen))
        self.strategy = new

    def _draft_request(self, request) -> DraftRequest:
        tokens = list(request.get_tokens(0))
        prompt = int(getattr(request, "py_orig_prompt_len", None) or request.py_prompt_len)
        seen = self.seen.setdefault(request.py_request_id, Seen(self.strategy.k))
        seen.length = len(tokens)
        remaining = int(request.py_max_new_tokens) - (len(tokens) - prompt) - 1  # the target adds one
        room = self.shape.max_model_len - len(tokens) - 1
        budget = max(0, min(seen.k, self.draft_limit(), remaining, room))
        return DraftRequest(request.py_request_id, tokens, prompt, budget, request_sampling(request))

    def draft_limit(self) -> int:
        """The most tokens a request may draft now: the config's k, within TensorRT-LLM's current
        ``max_draft_len`` (1.2 lowers it by ``draft_len_schedule`` as the batch grows)."""
        upstream = getattr(self, "max_draft_len", None)
        return self.strategy.k if upstream is None else min(self.strategy.k, int(upstream))

    def _hand_over(self, request, draft_request: DraftRequest, draft: Draft) -> None:
        request.py_draft_tokens = [int(t) for t in draft.token_ids]
        sampling = draft_request.sampling
        keep_logits = draft.probs is not None and not sampling.greedy and sampling.top_p >= 1.0
        request.py_draft_logits = probs_to_logits(draft.probs, sampling.temperature) if keep_logits else None
        self.seen[request.py_request_id].num_draft = len(draft.token_ids)

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
