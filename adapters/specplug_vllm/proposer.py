"""``specplug_vllm.Proposer``: the class vLLM's ``custom_class`` hook loads in each worker.

Per step vLLM calls ``propose`` with its batch as rows: the tokens each row sampled this step (``[]``
for a row still in prefill), the row's token count and the token array (prompt + accepted output). The
hosting layer does the rest, as for every engine: rows to requests (by id, from the runner; see
``runner``), the strategy each request named, what vLLM accepted, what the step cost (``auto``), the next
drafts, swaps of the config file. vLLM verifies with its own rejection sampler; this hook cannot pass
draft probabilities, so drafts are made greedily and verified as one-hot proposals, which is lossless at
any temperature.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from specplug.errors import SpecplugError
from specplug.hosting.building import EngineShape, StrategyBuilder
from specplug.hosting.faults import PluginFaults
from specplug.hosting.live import LiveTable
from specplug.hosting.stats import DraftStats
from specplug.hosting.token_rows import BatchView, TokenRows
from specplug_vllm import runner as runner_view
from specplug_vllm.plugin import check_vllm_version, installed_vllm_version, registry

logger = logging.getLogger("vllm.specplug")

CONFIG_ENV = "SPECPLUG_CONFIG"


def shape_from_vllm(vllm_config) -> EngineShape:
    model = vllm_config.model_config
    return EngineShape(vllm_config.speculative_config.num_speculative_tokens, model.get_vocab_size(),
                       vllm_config.scheduler_config.max_num_seqs, model.max_model_len, str(model.model),
                       str(model.tokenizer), str(vllm_config.device_config.device))


class Proposer:
    wants_runner = True  # the runner wrap (``runner.install``) hands over the runner before each call

    def __init__(self, vllm_config):
        self.config_path = os.environ.get(CONFIG_ENV) or None
        try:
            check_vllm_version(installed_vllm_version())
            self.shape = shape_from_vllm(vllm_config)
            self.live = LiveTable.from_file(StrategyBuilder(self.shape, registry(), log=logger).table,
                                            self.config_path)
        except SpecplugError as error:
            # vLLM re-raises this wrapped in its own traceback: say it once, plainly, in the log first
            logger.error("specplug: cannot start: %s", error)
            raise
        self.runner = None
        if not runner_view.install():
            logger.warning("specplug: this vLLM's model runner has no propose_draft_token_ids to show the "
                           "drafter its requests: rows are recognised by their tokens, and per-request "
                           "strategies are off (every request uses the default)")
        table = self.live.table
        self.stats = DraftStats(self.live.config.source, table.default_name, logger)
        self.rows = TokenRows(self.shape.max_model_len, self.shape.vocab_size, self.shape.max_k, self.stats,
                              PluginFaults(logger))
        logger.info("specplug: strategies %s from %s, default '%s' (vLLM bound k=%d)", ", ".join(table.strategies),
                    self.live.config.source, table.default_name, self.shape.max_k)
        self.stats.report(force=True)  # the stats file exists from the start

    @property
    def strategy(self):
        """The default strategy (what a request that names none drafts with)."""
        return self.live.table.default

    def load_model(self, target_model) -> None:
        """vLLM hands over its target here; specplug proposers that need one load their own copy."""

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray,
                token_ids_cpu: np.ndarray, slot_mappings=None, **_: object) -> list[list[int]]:
        request_ids, strategies = runner_view.requests_of(self.runner, len(sampled_token_ids))
        batch = BatchView(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, request_ids, strategies)
        rows = self.rows.observe(self.live.table, batch)
        self._swap_if_changed()
        drafts = self.rows.draft(self.live.table, batch, rows)
        self.stats.report()
        return [[int(t) for t in draft.token_ids] for draft in drafts]

    def _swap_if_changed(self) -> None:
        """Switch to the config file's new table; a config that fails to build leaves the old one serving."""
        old = self.live.table.default_name
        new, refused = self.live.poll()
        if refused is not None:
            logger.error("specplug: %s", refused)
            self.stats.reject(self.config_path, refused)
        if new is None:
            return
        in_flight = self.rows.hand_over(new)
        logger.info("specplug: now serving %s from %s (default '%s'), %d requests in flight moved over",
                    ", ".join(new.strategies), self.live.config.source, new.default_name, in_flight)
        self.stats.swapped(old, new.default_name, self.live.config.source, in_flight)
