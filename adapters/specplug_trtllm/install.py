"""Which TensorRT-LLM this adapter is written for, and the one error when it is missing."""

from __future__ import annotations

from specplug.errors import SpecplugError

SUPPORTED_VERSIONS = "1.1 and 1.2 (PyTorch backend); 1.0 untested"


def require_tensorrt_llm():
    """The ``tensorrt_llm`` module, or one clear error naming the package and the supported versions."""
    try:
        import tensorrt_llm
    except ImportError as error:
        raise SpecplugError(f"specplug_trtllm needs TensorRT-LLM (the tensorrt_llm package, {SUPPORTED_VERSIONS}) "
                            f"on a machine with a CUDA GPU: pip install 'specplug[trtllm]' there ({error})") from None
    return tensorrt_llm
