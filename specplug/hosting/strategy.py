"""Live strategies: what a row speculates with, the named table a host serves, and the hand-over on a swap.

Three things are called "strategy" in specplug; only this module's are live:
- ``config.StrategyConfig``: what a config file says (a proposer choice, k, adaptive_k);
- ``Strategy``: that made live for one host (a proposer object, its k, how the budget moves);
- ``StrategyTable``: every named ``Strategy`` of one config, and which is the default.
A request names a strategy from the table (``none`` turns speculation off) or takes the default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from specplug.config import Config, StrategyConfig
from specplug.errors import ConfigError, SpecplugError, closest
from specplug.hosting.faults import cause
from specplug.proposers.base import Proposer


class DraftPolicy(Protocol):
    """Chooses each row's draft budget every step (``auto``) and learns from what happened."""

    def plan(self, rows: list, batch_size: int, floor_width: int) -> list[int]:
        """Draft budgets (0..k) for ``rows`` of this strategy; ``floor_width`` is the verify width the
        other rows of the batch already need (1 when none)."""

    def trim(self, rows: list, drafts: list, batch_size: int, floor_width: int) -> list[int]:
        """How many tokens of each row's draft to verify, now that the drafts are known."""

    def observe(self, rows: list, drafts: list, accepted: list[int], batch_size: int, width: int,
                target_seconds: float, propose_seconds: float, tokens: int | None = None) -> None:
        """One verify step: per row the draft verified and how many of it were accepted, and what the
        step cost (``tokens``: what it verified in all, where the engine packs rows rather than pads)."""


@dataclass(eq=False)
class Strategy:
    name: str  # as configured (the proposer's name unless given another)
    proposer: Proposer
    k: int  # the most drafts a row may propose per step
    adaptive_k: bool = False  # per-row budget from the row's own acceptance (HF's heuristic)
    policy: DraftPolicy | None = None  # when set (auto), it chooses the budgets instead
    source: str = "direct"  # the config file it was built from
    recipe: tuple = ()  # what it was built from (``recipe``): a swap that leaves it alone keeps this object

    def __repr__(self) -> str:
        return f"Strategy({self.name!r}, k={self.k})"


@dataclass
class StrategyTable:
    strategies: dict[str, Strategy]  # by name: the top-level proposer's, `none`, serve.strategies, `auto`
    default_name: str
    config: Config

    @property
    def default(self) -> Strategy:
        return self.strategies[self.default_name]

    def pick(self, name: str | None) -> Strategy:
        """The strategy a request named (None: the default); ConfigError for a name not in the table."""
        if name is None:
            return self.default
        if name not in self.strategies:
            raise ConfigError(f"unknown strategy '{name}'{closest(name, self.strategies)}; known: "
                              f"{', '.join(self.strategies)}")
        return self.strategies[name]

    @property
    def widest(self) -> int:
        return max(s.k for s in self.strategies.values())


MakeStrategy = Callable[[str, StrategyConfig], Strategy]


def recipe(config: Config, entry: StrategyConfig) -> tuple:
    """Everything of ``config`` a strategy is built from: equal recipes build equal strategies."""
    explore = config.serve.auto_explore if entry.adaptive_k == "auto" else None
    return entry, config.dtype, config.max_model_len, config.enforce_eager, explore


def build_table(config: Config, make: MakeStrategy, previous: StrategyTable | None = None) -> StrategyTable:
    """Every strategy ``config`` names, each made by the host's ``make`` (which knows its engine); one that
    fails to start (a third-party factory may raise anything) refuses the whole config. A strategy of the
    ``previous`` table with the same name and recipe is kept as it is: its proposer's state, its rows'
    budgets and auto's measurements live on, and a seeded request in flight draws as it would have."""
    serve = config.serve
    entries = dict(serve.strategies)
    if serve.auto_strategy is not None:
        auto = serve.strategies[serve.auto_strategy]
        entries["auto"] = StrategyConfig(auto.proposer, auto.num_speculative_tokens, "auto")
    kept = previous.strategies if previous is not None else {}
    table = {}
    for name, entry in entries.items():
        wanted = recipe(config, entry)
        if name in kept and kept[name].recipe == wanted:
            table[name] = kept[name]
            continue
        try:
            table[name] = make(name, entry)
        except SpecplugError:
            raise
        except Exception as exc:
            raise ConfigError(f"strategy '{name}': proposer '{entry.proposer.name}' failed to start ({cause(exc)})") \
                from None
        table[name].recipe = wanted
    return StrategyTable(table, serve.default_strategy, config)


def hand_over(rows: Iterable, table: StrategyTable, release: Callable) -> int:
    """A swap: each row in flight goes on with the new table's default, or, when its request named its
    strategy, with the new table's strategy of that name (else the default); released from the old proposer
    first, its budget reset. A row whose strategy the swap kept is left alone. How many rows moved."""
    moved = 0
    for row in rows:
        new = table.strategies.get(row.strategy.name, table.default) if row.named else table.default
        if new is row.strategy:
            continue
        release(row)
        row.strategy, row.k, row.num_draft, row.plain = new, new.k, 0, False
        moved += 1
    return moved
