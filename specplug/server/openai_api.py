"""OpenAI: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (streaming and not).

specplug's own request field ``strategy`` (a configured strategy name, ``none`` for no speculation, or
``auto``) comes through the OpenAI client's ``extra_body``; ``top_k`` likewise, as in vLLM.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from specplug.engine.batch import TokenLogprob
from specplug.server.protocol import ApiError, make_job, refuse_unsupported, require_api_key, sse, token_text
from specplug.server.state import Server
from specplug.server.worker import Chunk, Job, Result

router = APIRouter(dependencies=[Depends(require_api_key)])  # every /v1 route, as vLLM's --api-key
UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "presence_penalty": 0.0, "frequency_penalty": 0.0,
               "suffix": None, "tools": None, "logit_bias": None}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    strategy: str | None = None


class CompletionRequest(Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class ChatRequest(Common):
    messages: list[Message]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None


@router.get("/v1/models")
async def models(request: Request) -> dict:
    server: Server = request.app.state.server
    return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": 0,
                                        "owned_by": "specplug"}]}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    server: Server = request.app.state.server
    refuse_unsupported(body.model_dump(), UNSUPPORTED)
    job = await _job(server, _completion_prompt(body.prompt), body, body.max_tokens, body.logprobs)
    reply = Reply(server, body, "cmpl", "text_completion", job)
    if body.stream:
        return _streaming(reply.stream(server.worker.stream(job)))
    return reply.whole(await server.worker.collect(job))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    server: Server = request.app.state.server
    refuse_unsupported(body.model_dump(), UNSUPPORTED)
    if not body.messages:
        raise ApiError("messages is empty: send at least one message", param="messages")
    messages = [{"role": m.role if m.role != "developer" else "system",
                 "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
                for m in body.messages]
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise ApiError("give max_completion_tokens or max_tokens, not both", param="max_completion_tokens")
    top = (body.top_logprobs or 0) if body.logprobs else None
    if body.top_logprobs and not body.logprobs:
        raise ApiError("top_logprobs needs logprobs: true", param="top_logprobs")
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    job = await _job(server, messages, body, limit, top)
    reply = Reply(server, body, "chatcmpl", "chat.completion", job)
    if body.stream:
        return _streaming(reply.stream(server.worker.stream(job)))
    return reply.whole(await server.worker.collect(job))


def _completion_prompt(prompt) -> Any:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise ApiError(f"one prompt per request (got {len(prompt)}); send them as separate requests",
                           param="prompt")
        prompt = prompt[0]
    return prompt  # text, or token ids


async def _job(server: Server, prompt, body: Common, max_tokens: int | None, logprobs: int | None) -> Job:
    return await make_job(server, prompt, 16 if max_tokens is None and isinstance(body, CompletionRequest) else max_tokens,
                    temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, seed=body.seed,
                    stop=body.stop, strategy=body.strategy, logprobs=logprobs)


def _streaming(events: AsyncIterator[dict]) -> StreamingResponse:
    return StreamingResponse(sse(events, openai=True), media_type="text/event-stream")


class Reply:
    """Builds one request's response objects (whole or chunked) in the completions or chat shape."""

    def __init__(self, server: Server, body: Common, prefix: str, kind: str, job: Job):
        self.server, self.body, self.kind, self.job = server, body, kind, job
        self.chat = kind == "chat.completion"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = body.model or server.model_name

    def _envelope(self, kind: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _usage(self, generated: int) -> dict:
        prompt = len(self.job.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    def whole(self, result: Result) -> JSONResponse:
        choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason,
                                  "logprobs": self._logprobs(result.logprobs, 0)}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        body = self._envelope(self.kind, [choice])
        body["usage"] = self._usage(len(result.token_ids))
        return JSONResponse(body)

    async def stream(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[dict]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        generated, offset = 0, 0
        if self.chat:
            yield self._envelope(kind, [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}])
        async for chunk in chunks:
            generated += len(chunk.token_ids)
            choice: dict[str, Any] = {"index": 0, "finish_reason": chunk.finish_reason,
                                      "logprobs": self._logprobs(chunk.logprobs, offset)}
            offset += sum(len(token_text(self.server.llm.tokenizer, lp.token_id)) for lp in chunk.logprobs)
            if self.chat:
                choice["delta"] = {"content": chunk.text} if chunk.text else {}
            else:
                choice["text"] = chunk.text
            yield self._envelope(kind, [choice])
        options = self.body.stream_options
        if options is not None and options.include_usage:
            final = self._envelope(kind, [])
            final["usage"] = self._usage(generated)
            yield final

    def _logprobs(self, logprobs: list[TokenLogprob], offset: int) -> dict | None:
        if self.job.logprobs is None:
            return None
        text = lambda token_id: token_text(self.server.llm.tokenizer, token_id)  # noqa: E731
        if self.chat:
            return {"content": [{"token": text(lp.token_id), "logprob": lp.logprob,
                                 "bytes": list(text(lp.token_id).encode()),
                                 "top_logprobs": [{"token": text(t), "logprob": v, "bytes": list(text(t).encode())}
                                                  for t, v in lp.top]} for lp in logprobs]}
        offsets = []
        for lp in logprobs:
            offsets.append(offset)
            offset += len(text(lp.token_id))
        return {"tokens": [text(lp.token_id) for lp in logprobs],
                "token_logprobs": [lp.logprob for lp in logprobs],
                "top_logprobs": [{text(t): v for t, v in lp.top} for lp in logprobs],
                "text_offset": offsets}
