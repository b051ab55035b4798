"""The strategy table a host serves with, swapped live: by a watched config file, a signal or an admin call.

A new config is built whole (every strategy started) before anything changes; one that fails to load or
to build is refused, and the table that was serving keeps serving. Rows in flight then move to the new
table's strategy of the same name (``strategy.hand_over``), which the host does between two steps. A
strategy the new config leaves as it was is kept, object and all (``strategy.build_table``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import NoReturn

from specplug.config import Config, ConfigWatcher, load_config
from specplug.errors import ConfigError, SpecplugError
from specplug.hosting.strategy import StrategyTable

# a host's table builder: (config, the table serving now, whose unchanged strategies it keeps) -> table
Build = Callable[[Config, StrategyTable | None], StrategyTable]


class LiveTable:
    def __init__(self, build: Build, config: Config, path: str | None = None,
                 overrides: Sequence[str] = (), watcher: ConfigWatcher | None = None):
        self.build, self.path, self.overrides = build, path, list(overrides)
        self.watcher = watcher
        self.table = build(config, None)
        self.swaps: Counter[str] = Counter()  # "applied" / "refused"

    @classmethod
    def from_file(cls, build: Build, path: str | None,
                  overrides: Sequence[str] = ()) -> "LiveTable":
        """The table of the config at ``path`` (None: ``$SPECPLUG_CONFIG``, else the defaults), watched."""
        watcher = ConfigWatcher(path) if path else None  # before the file is read: no change is missed
        return cls(build, load_config(path, overrides), path, overrides, watcher)

    @property
    def config(self) -> Config:
        return self.table.config

    def swap(self, config: Config) -> StrategyTable:
        """Make ``config`` live, or raise ConfigError (counted) and keep the current table."""
        try:
            table = self.build(config, self.table)
        except SpecplugError as exc:
            self.refuse(config.source, exc)
        self.table = table
        self.swaps["applied"] += 1
        return table

    def reload(self) -> StrategyTable:
        """Re-read the config file (with the same overrides) and swap to it."""
        if self.path is None:
            raise ConfigError("started without a config file: nothing to reload")
        try:
            config = load_config(self.path, self.overrides)
        except SpecplugError as exc:  # unreadable, not YAML, or invalid
            self.refuse(self.path, exc)
        return self.swap(config)

    def poll(self) -> tuple[StrategyTable | None, str | None]:
        """For hosts that check the file each step: (the new table, None) when it changed and built;
        (None, why) when it changed and was refused; (None, None) when it did not change."""
        if self.watcher is None or not self.watcher.changed():
            return None, None
        try:
            return self.reload(), None
        except ConfigError as exc:
            return None, str(exc)

    def refuse(self, source: str, exc: SpecplugError) -> NoReturn:
        """Count a refused change and raise its one-line ConfigError."""
        self.swaps["refused"] += 1
        raise ConfigError(f"config from {source} refused, the current one keeps serving: {exc}") from None
