"""specplug: speculative decoding with pluggable proposers and lossless verification.

The plugin API is ``specplug.api``; its names are also reachable here (``from specplug import Proposer``),
loaded on first use, so that ``import specplug`` alone (a pytest plugin, a CLI's start) loads nothing heavy.
"""

import importlib
import importlib.util

__version__ = "0.1.0"


def __getattr__(name: str):
    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(name)  # a submodule: `from specplug import hookspecs` then imports it
    api = importlib.import_module("specplug.api")
    if name in api.__all__:
        globals()[name] = getattr(api, name)  # found once: later lookups skip this function
        return globals()[name]
    raise AttributeError(f"module 'specplug' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *importlib.import_module("specplug.api").__all__])
