"""specplug proposers inside TensorRT-LLM's PyTorch backend, as a user-provided ``Drafter``.

    from tensorrt_llm import LLM
    from specplug_trtllm import build_speculative_config

    speculative_config, llm_kwargs = build_speculative_config("configs/ngram.yaml", model="/models/llama")
    llm = LLM(model="/models/llama", speculative_config=speculative_config, **llm_kwargs)

Importing this package never needs TensorRT-LLM; building a drafter without it is one clear error.
docs/tensorrt-llm.md says what was run for real (nothing of TensorRT-LLM itself) and what was not.
"""

from specplug_trtllm.building import SUPPORTED_VERSIONS, build_speculative_config, require_tensorrt_llm
from specplug_trtllm.drafter import Drafter

__all__ = ["Drafter", "SUPPORTED_VERSIONS", "build_speculative_config", "require_tensorrt_llm"]
