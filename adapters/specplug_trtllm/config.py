"""The ``trtllm:`` config section, owned by this adapter: the core finds it by its entry point
(group ``specplug.config_sections``) and checks it with the same rules as every other section."""

from __future__ import annotations

from dataclasses import dataclass

from specplug.options import option


@dataclass(frozen=True)
class TrtllmOptions:
    max_concurrency: int | None = option(None, "no drafting above this many requests (TensorRT-LLM's Drafter)", ge=1)
    draft_len_schedule: dict[int, int] | None = option(None, "{batch size threshold: draft length}, TensorRT-LLM 1.2+")
    cuda_graph_padding: bool = option(False, "pad drafts to the static length (with TensorRT-LLM's CUDA graphs)")

    def check(self) -> str | None:
        schedule = self.draft_len_schedule
        if schedule is not None and not (schedule and all(b >= 1 and n >= 0 for b, n in schedule.items())):
            return (f"trtllm.draft_len_schedule must map batch sizes (>= 1) to draft lengths (>= 0), e.g. "
                    f"{{1: 4, 8: 2, 32: 0}}; got {schedule!r}")
        return None
