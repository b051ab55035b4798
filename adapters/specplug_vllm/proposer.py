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
import numpy as np

from specplug.config import ConfigWatcher
from specplug.errors import SpecplugError
from specplug_vllm.plugin import check_vllm_version, installed_vllm_version
from specplug_vllm.rows import RowTranslator
from specplug_vllm.stats import AdapterStats
from specplug_vllm.strategy import EngineShape, Strategy, StrategyBuilder, refresh

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
        self.rows = RowTranslator(self.shape.max_model_len, self.shape.vocab_size)
        self.stats = AdapterStats()
        self.stats.start(self.strategy.name, self.strategy.source, self.strategy.k)
        logger.info("specplug: proposer '%s' from %s, k=%d (vLLM bound %d)", self.strategy.name,
                    self.strategy.source, self.strategy.k, self.shape.max_k)

    def load_model(self, target_model) -> None:
        """vLLM hands over its target here; specplug proposers that need one load their own copy."""

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray,
                token_ids_cpu: np.ndarray, slot_mappings=None, **_: object) -> list[list[int]]:
        rows = self.rows.observe(self.strategy, sampled_token_ids, num_tokens_no_spec, token_ids_cpu,
                                 self.stats.current)
        self._swap_if_changed()
        drafts = self.rows.draft(self.strategy, rows, len(sampled_token_ids))
        if rows:
            self.stats.current.steps += 1
        self.stats.report()
        return drafts

    def _swap_if_changed(self) -> None:
        """Switch to the config file's new strategy; a config that fails to build leaves the old one running."""
        new, message = refresh(self.builder, self.config_path, self.watcher)
        if message is not None:
            logger.error("specplug: rejected the new %s (%s); still running proposer '%s'",
                         self.config_path, message, self.strategy.name)
            self.stats.reject(self.config_path, message)
        if new is None:
            return
        in_flight = self.rows.hand_over(self.strategy, new)
        logger.info("specplug: switched proposer '%s' -> '%s' (k=%d) with %d requests in flight",
                    self.strategy.name, new.name, new.k, in_flight)
        self.strategy = new
        self.stats.start(new.name, new.source, new.k, in_flight=in_flight)
