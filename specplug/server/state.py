"""The serving state: one engine (in its worker thread), the named strategies, live swaps.

The strategy table is the hosting layer's ``LiveTable``, as inside vLLM and TensorRT-LLM: a swap builds
every strategy of the new config first, and only when all of them start does it replace the table; the
engine takes it between two steps (new requests get its default; rows in flight move to its strategy of
the same name). Anything that needs a new engine (model, dtype, batch size...) is refused by name.
"""

from __future__ import annotations

import logging
import os
import threading

from specplug.config import Config, with_overrides
from specplug.errors import ConfigError, SpecplugError
from specplug.hosting.live import LiveTable
from specplug.hosting.strategy import Strategy, StrategyTable, build_table
from specplug.llm import LLM
from specplug.server.metrics import Metrics
from specplug.server.worker import EngineWorker

logger = logging.getLogger("specplug.server")

# keys a running server cannot change: they shape the engine it built at start
FIXED_KEYS = ("model", "dtype", "device", "max_model_len", "threads", "linear_kernel", "enforce_eager", "compile",
              "verifier")
FIXED_SERVE_KEYS = ("max_batch_size", "drain_timeout_s")  # the engine's rows; uvicorn's shutdown, set at start
API_KEY_ENV = "SPECPLUG_API_KEY"


class Server:
    def __init__(self, config: Config, config_path: str | None = None, overrides: list[str] | None = None,
                 registry=None):
        serve = config.serve
        self.llm = LLM(config, registry, max_batch_size=serve.max_batch_size,
                       max_speculative_tokens=serve.max_num_speculative_tokens)
        self.metrics = Metrics()
        self.started_with = config
        self.live = LiveTable(self._build, config, config_path, overrides or [])
        self.llm.engine.swap(self.live.table)
        self.worker = EngineWorker(self.llm.engine, self.llm.tokenizer, self.metrics)
        self._swap_lock = threading.Lock()

    @property
    def config(self) -> Config:
        return self.live.config

    @property
    def config_path(self) -> str | None:
        return self.live.path

    @property
    def strategies(self) -> dict[str, Strategy]:
        return self.live.table.strategies

    @property
    def model_name(self) -> str:
        return self.config.serve.served_model_name or self.config.model

    @property
    def can_sample(self) -> bool:
        capabilities = self.llm.registry.get("verifier", self.config.verifier.name).capabilities
        return getattr(capabilities, "sampling", True)

    @property
    def api_key(self) -> str | None:
        """The bearer token the inference routes require (None: open): serve.api_key, else $SPECPLUG_API_KEY."""
        return self.config.serve.api_key or os.environ.get(API_KEY_ENV) or None

    @property
    def default_strategy(self) -> str:
        return self.live.table.default_name

    def strategy(self, name: str | None) -> Strategy | None:
        """The strategy a request named (None: the default when its row starts)."""
        return None if name is None else self.live.table.pick(name)

    # ---- building and swapping ------------------------------------------------------------------
    def _build(self, config: Config, previous: StrategyTable | None) -> StrategyTable:
        self._check_fixed(config)
        return build_table(config, self.llm.strategy_maker(config), previous)

    def _check_fixed(self, config: Config) -> None:
        changed = [key for key in FIXED_KEYS if getattr(config, key) != getattr(self.started_with, key)]
        changed += [f"serve.{key}" for key in FIXED_SERVE_KEYS
                    if getattr(config.serve, key) != getattr(self.started_with.serve, key)]
        if changed:
            raise ConfigError(f"{', '.join(changed)} cannot change while serving: restart the server")

    def swap(self, config: Config) -> None:
        """Make ``config`` live, or raise ConfigError and keep the current one."""
        self._changed(lambda: self.live.swap(config))

    def reload(self) -> None:
        """Re-read the config file (SIGHUP or a change on disk)."""
        if self.config_path is None:
            logger.warning("specplug: the server was started without --config: nothing to reload")
            return
        self._changed(self.live.reload)

    def apply(self, overrides: dict) -> None:
        """``POST /admin/config``: a mapping of config keys merged over the live config."""
        source = "POST /admin/config"
        try:
            config = with_overrides(self.config, overrides, source=source)
        except SpecplugError as exc:
            self._changed(lambda: self.live.refuse(source, exc))
            return
        self.swap(config)

    def _changed(self, change) -> None:
        """Run a table change; count and log its outcome; hand the new table to the engine thread."""
        with self._swap_lock:
            try:
                table = change()
            except ConfigError as exc:
                self.metrics.swaps.labels("refused").inc()
                logger.error("specplug: %s", exc)
                raise
            self.metrics.swaps.labels("applied").inc()
            self.worker.call(lambda: self.llm.engine.swap(table))
            logger.info("specplug: strategy '%s' is now the default (config from %s)", table.default_name,
                        table.config.source)
