"""A specplug config file -> TensorRT-LLM's ``UserProvidedDecodingConfig`` and the ``LLM(...)`` keywords.

``trtllm-serve``'s YAML cannot hold a drafter object, so the drafter is built here, in Python, from the
same config file every other engine reads. Of that file the adapter reads ``proposer``,
``num_speculative_tokens`` (TensorRT-LLM's ``max_draft_len``), ``adaptive_k``, ``dtype`` (of a
proposer's own model copy) and this adapter's ``trtllm:`` section (``config.py``: ``max_concurrency``,
``draft_len_schedule``, ``cuda_graph_padding``); the model, batch size, context length and sampling are TensorRT-LLM's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specplug.config import load_config
from specplug.models.loader import resolve_model
from specplug_trtllm.config import TrtllmOptions
from specplug_trtllm.drafter import Drafter
from specplug_trtllm.install import SUPPORTED_VERSIONS, require_tensorrt_llm
from specplug.hosting.building import EngineShape, native_method
from specplug.plugins import load_registry

__all__ = ["SUPPORTED_VERSIONS", "build_speculative_config", "engine_shape", "require_tensorrt_llm"]


def engine_shape(model: str, max_k: int, max_batch_size: int, max_seq_len: int | None,
                 device: str = "cuda") -> EngineShape:
    """What the drafter needs of the engine, read from the model directory's config.json."""
    model_dir = resolve_model(model)
    hf = json.loads((Path(model_dir) / "config.json").read_text())
    return EngineShape(max_k, int(hf["vocab_size"]), max_batch_size,
                       int(max_seq_len or hf.get("max_position_embeddings", 2048)), str(model_dir), str(model_dir),
                       device)


def build_speculative_config(path: str, model: str, max_batch_size: int = 8,
                             max_seq_len: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(``UserProvidedDecodingConfig`` with a specplug ``Drafter``, keywords for ``tensorrt_llm.LLM``)."""
    config = load_config(path)
    require_tensorrt_llm()
    import tensorrt_llm.llmapi as llmapi

    native = native_method(config, load_registry(), "trtllm_decoding_config")
    if native is not None:  # one of TensorRT-LLM's own methods (eagle3: Eagle3DecodingConfig with the same head)
        class_name, keywords = native
        return getattr(llmapi, class_name)(**keywords), {"max_batch_size": max_batch_size}
    UserProvidedDecodingConfig = llmapi.UserProvidedDecodingConfig

    trt = config.section("trtllm", TrtllmOptions)
    shape = engine_shape(model, config.num_speculative_tokens, max_batch_size, max_seq_len)
    drafter = Drafter(path, shape, trt.max_concurrency, trt.draft_len_schedule, trt.cuda_graph_padding)
    speculative = UserProvidedDecodingConfig(max_draft_len=config.num_speculative_tokens, drafter=drafter,
                                             resource_manager=None)
    # the drafter reads each request's tokens as of the last iteration: the overlap scheduler would run it
    # one step behind (TensorRT-LLM's own NGram drafter needs it off too)
    return speculative, {"disable_overlap_scheduler": True, "max_batch_size": max_batch_size}
