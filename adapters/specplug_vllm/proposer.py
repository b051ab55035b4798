"""``specplug_vllm.Proposer``: the class vLLM's ``custom_class`` hook loads in each worker.

Per step vLLM calls ``propose`` with its batch as rows: the tokens each row sampled this step (``[]``
for a row still in prefill), the row's token count and the token array (prompt + accepted output).
The adapter translates that into specplug terms (stable ``seq_id`` per sequence, see ``rows``;
``VerifyOutcome`` from what vLLM accepted; released sequences) and calls the configured specplug
proposer unchanged, the same object the embedded engine runs. vLLM verifies with its own rejection
sampler; this hook cannot pass draft probabilities, so drafts are made greedily and verified as one-hot
proposals, which is lossless at any temperature.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from specplug.config import ConfigWatcher
from specplug.errors import SpecplugError
from specplug.metadata import DraftRequest
from specplug.proposers.base import check_drafts
from specplug_vllm.plugin import check_vllm_version, installed_vllm_version
from specplug_vllm.rows import RowTracker, TrackedRow
from specplug_vllm.stats import AdapterStats
from specplug_vllm.strategy import EngineShape, Strategy, StrategyBuilder, refresh, verified

logger = logging.getLogger("vllm.specplug")

CONFIG_ENV = "SPECPLUG_CONFIG"


class Proposer:
    def __init__(self, vllm_config):
        self.config_path = os.environ.get(CONFIG_ENV) or None
        self.watcher = ConfigWatcher(self.config_path) if self.config_path else None  # before it is read
        try:
            check_vllm_version(installed_vllm_version())
            self.shape = EngineShape.from_vllm(vllm_config)
            self.builder = StrategyBuilder(self.shape)
            self.strategy: Strategy = self.builder.build(self.config_path)
        except SpecplugError as error:
            # vLLM re-raises this wrapped in its own traceback: say it once, plainly, in the log first
            logger.error("specplug: cannot start: %s", error)
            raise
        self.rows = RowTracker()
        self.stats = AdapterStats()
        self.stats.start(self.strategy.name, self.strategy.source, self.strategy.k)
        logger.info("specplug: proposer '%s' from %s, k=%d (vLLM bound %d)", self.strategy.name,
                    self.strategy.source, self.strategy.k, self.shape.max_k)

    def load_model(self, target_model) -> None:
        """vLLM hands over its target here; specplug proposers that need one load their own copy."""

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray,
                token_ids_cpu: np.ndarray, slot_mappings=None, **_: object) -> list[list[int]]:
        live = {i: token_ids_cpu[i, : num_tokens_no_spec[i]].copy()
                for i, sampled in enumerate(sampled_token_ids) if sampled}
        rows, gone = self.rows.update(live, {i: len(sampled_token_ids[i]) for i in live}, self.strategy.k)
        for tracked in gone:
            self.strategy.proposer.release(tracked.seq_id)
        self._report_verified(rows, sampled_token_ids)
        self._swap_if_changed()
        drafts = [[] for _ in sampled_token_ids]
        if rows:
            for index, token_ids in zip(rows, self._draft(list(rows.values()))):
                drafts[index] = token_ids
            self.stats.current.steps += 1
        self.stats.report()
        return drafts

    def _draft(self, rows: Sequence[TrackedRow]) -> list[list[int]]:
        proposer = self.strategy.proposer
        requests = [DraftRequest(t.seq_id, t.tokens, t.num_prompt_tokens,
                                 max(0, min(t.k, self.shape.max_model_len - len(t.tokens))))
                    for t in rows]
        drafts = proposer.propose(requests)
        check_drafts(proposer, requests, drafts, self.shape.vocab_size)
        for tracked, draft in zip(rows, drafts):
            tracked.num_draft = len(draft.token_ids)
        return [[int(t) for t in d.token_ids] for d in drafts]

    def _report_verified(self, rows: dict[int, TrackedRow], sampled_token_ids: list[list[int]]) -> None:
        """Tell the proposer what vLLM kept of last step's drafts: row i sampled accepted drafts + 1."""
        outcomes = []
        for index, tracked in rows.items():
            if not tracked.num_draft:
                continue
            emitted = tuple(sampled_token_ids[index])
            accepted = min(len(emitted) - 1, tracked.num_draft)
            self.stats.current.record(tracked.num_draft, accepted)
            outcomes.append(verified(tracked, tracked.seq_id, accepted, emitted, self.strategy))
        if outcomes:
            self.strategy.proposer.on_verified(outcomes)

    def _swap_if_changed(self) -> None:
        """Switch to the config file's new strategy; a config that fails to build leaves the old one running."""
        new, message = refresh(self.builder, self.config_path, self.watcher)
        if message is not None:
            logger.error("specplug: rejected the new %s (%s); still running proposer '%s'",
                         self.config_path, message, self.strategy.name)
            self.stats.reject(self.config_path, message)
        if new is None:
            return
        in_flight = self.rows.tracked()
        for tracked in in_flight:
            self.strategy.proposer.release(tracked.seq_id)
            tracked.k = new.k
        logger.info("specplug: switched proposer '%s' -> '%s' (k=%d) with %d requests in flight",
                    self.strategy.name, new.name, new.k, len(in_flight))
        self.strategy = new
        self.stats.start(new.name, new.source, new.k, in_flight=len(in_flight))
