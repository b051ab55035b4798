"""The serving state: one engine (in its worker thread), the named strategies, live swaps.

A swap builds every strategy of the new config first; only when all of them start does it replace the
table and the engine's default (on the engine thread, between steps). Rows in flight keep the strategy
they started with. Anything that needs a new engine (model, dtype, batch size...) is refused by name.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import NoReturn

from specplug.config import Config, load_config, with_overrides
from specplug.engine.strategy import Strategy
from specplug.errors import ConfigError, SpecplugError
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
        self.config_path, self.overrides = config_path, list(overrides or [])
        serve = config.serve
        self.llm = LLM(config, registry, max_batch_size=serve.max_batch_size,
                       max_speculative_tokens=serve.max_num_speculative_tokens)
        self.metrics = Metrics()
        self.config = config
        self.strategies = self._build(config)
        self.llm.engine.strategy = self.strategies[serve.default_strategy]
        self.worker = EngineWorker(self.llm.engine, self.llm.tokenizer, self.metrics)
        self._swap_lock = threading.Lock()

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
        return self.config.serve.default_strategy

    def strategy(self, name: str | None) -> Strategy | None:
        """The strategy a request named (None: the default when its row starts)."""
        if name is None:
            return None
        if name not in self.strategies:
            raise ConfigError(f"unknown strategy '{name}'; this server has: {', '.join(self.strategies)}")
        return self.strategies[name]

    # ---- building and swapping ------------------------------------------------------------------
    def _build(self, config: Config) -> dict[str, Strategy]:
        serve, engine = config.serve, self.llm.engine
        table = {}
        for name, entry in serve.strategies.items():
            table[name] = self._strategy(name, entry, entry.adaptive_k, serve.auto_explore)
            engine.check_strategy(table[name])
        if serve.auto_strategy is not None:
            table["auto"] = self._strategy("auto", serve.strategies[serve.auto_strategy], "auto", serve.auto_explore)
        return table

    def _strategy(self, name: str, entry, adaptive_k: bool | str, explore: float) -> Strategy:
        try:
            return self.llm.make_strategy(name, entry.proposer, entry.num_speculative_tokens, adaptive_k, explore)
        except SpecplugError:
            raise
        except Exception as exc:  # a third-party factory may raise anything: refuse the config, keep serving
            raise ConfigError(f"strategy '{name}': proposer '{entry.proposer.name}' failed to start "
                              f"({type(exc).__name__}: {exc})") from None

    def swap(self, config: Config) -> None:
        """Make ``config`` live, or raise ConfigError and keep the current one."""
        with self._swap_lock:
            try:
                self._check_fixed(config)
                table = self._build(config)
            except SpecplugError as exc:
                self._refuse(config.source, exc)
            default = table[config.serve.default_strategy]
            self.config, self.strategies = config, table
            self.worker.call(lambda: setattr(self.llm.engine, "strategy", default))
            self.metrics.swaps.labels("applied").inc()
            logger.info("specplug: strategy '%s' is now the default (config from %s)", default.name, config.source)

    def _check_fixed(self, config: Config) -> None:
        changed = [key for key in FIXED_KEYS if getattr(config, key) != getattr(self.config, key)]
        changed += [f"serve.{key}" for key in FIXED_SERVE_KEYS
                    if getattr(config.serve, key) != getattr(self.config.serve, key)]
        if changed:
            raise ConfigError(f"{', '.join(changed)} cannot change while serving: restart the server")

    def reload(self) -> None:
        """Re-read the config file (SIGHUP or a change on disk)."""
        if self.config_path is None:
            logger.warning("specplug: the server was started without --config: nothing to reload")
            return
        try:
            config = load_config(self.config_path, self.overrides)
        except SpecplugError as exc:  # unreadable, not YAML, or invalid
            self._refuse(self.config_path, exc)
        self.swap(config)

    def apply(self, overrides: dict) -> None:
        """``POST /admin/config``: a mapping of config keys merged over the live config."""
        source = "POST /admin/config"
        try:
            config = with_overrides(self.config, overrides, source=source)
        except SpecplugError as exc:
            self._refuse(source, exc)
        self.swap(config)

    def _refuse(self, source: str, exc: SpecplugError) -> NoReturn:
        """Count, log and raise a refused config change; the current config keeps serving."""
        message = f"config from {source} refused, the current one keeps serving: {exc}"
        self.metrics.swaps.labels("refused").inc()
        logger.error("specplug: %s", message)
        raise ConfigError(message) from None
