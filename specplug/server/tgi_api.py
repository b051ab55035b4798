"""TGI (``/generate``, ``/generate_stream``, ``/`` with ``stream``, ``/info``) and SageMaker LMI
(``/ping``, ``/invocations``): both take ``{"inputs": ..., "parameters": {...}}``.

Per-request strategy: ``parameters.strategy``. TGI's finish reasons are ``length``, ``eos_token`` and
``stop_sequence``; its generated text keeps a stop sequence that ended it (as TGI does). LMI streams JSON
lines by default (``serve.sagemaker_stream: sse`` for Server-Sent Events).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from specplug.server.protocol import json_lines, make_job, refuse_unsupported, require_api_key, sse, token_text
from specplug.server.state import Server
from specplug.server.worker import Chunk, Job, Result

router = APIRouter()
GUARDED = [Depends(require_api_key)]  # the generating routes; /info and /ping stay open
# sent (as null or default) by huggingface_hub's InferenceClient; refused when set to anything else
UNSUPPORTED = {"adapter_id": None, "best_of": 1, "decoder_input_details": False, "frequency_penalty": None,
               "grammar": None, "repetition_penalty": None, "top_n_tokens": None, "truncate": None,
               "typical_p": None, "watermark": False}


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int | None = None
    details: bool = False
    stop: list[str] | None = None
    stop_sequences: list[str] | None = None  # LMI's name for stop
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = Field(default=None, ge=0)
    return_full_text: bool | None = None
    strategy: str | None = None
    adapter_id: str | None = None
    best_of: int | None = None
    decoder_input_details: bool | None = None
    frequency_penalty: float | None = None
    grammar: Any = None
    repetition_penalty: float | None = None
    top_n_tokens: int | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


async def _job(server: Server, body: GenerateRequest) -> Job:
    p = body.parameters
    refuse_unsupported(p.model_dump(), UNSUPPORTED)
    temperature = p.temperature
    if p.do_sample is False or (p.do_sample is None and temperature is None):
        temperature = 0.0 if p.do_sample is False else None  # TGI: greedy unless do_sample
    elif p.do_sample and temperature is None:
        temperature = 1.0
    stop = (p.stop or []) + (p.stop_sequences or [])
    return await make_job(server, body.inputs, p.max_new_tokens, temperature=temperature, top_p=p.top_p, top_k=p.top_k,
                    seed=p.seed, stop=stop if stop else None, strategy=p.strategy, logprobs=0,
                    max_tokens_param="max_new_tokens")


def finish_reason(reason: str, eos: bool) -> str:
    return "length" if reason == "length" else "eos_token" if eos else "stop_sequence"


class Tokens:
    """TGI's and LMI's per-token objects, and the generated text as TGI reports it."""

    def __init__(self, server: Server, body: GenerateRequest, job: Job, logprob_key: str):
        self.server, self.body, self.job, self.key = server, body, job, logprob_key
        self.special = set(server.llm.tokenizer.all_special_ids)

    def token(self, token_id: int, logprob: float) -> dict:
        return {"id": token_id, "text": token_text(self.server.llm.tokenizer, token_id), self.key: logprob,
                "special": token_id in self.special}

    def text(self, token_ids: list[int]) -> str:
        text = self.server.llm.tokenizer.decode(token_ids, skip_special_tokens=True)
        return (self.body.inputs + text) if self.body.parameters.return_full_text else text

    def details(self, result: Result, with_tokens: bool) -> dict:
        details: dict[str, Any] = {"finish_reason": finish_reason(result.finish_reason, result.eos),
                                   "generated_tokens": len(result.token_ids), "seed": self.job.sampling.seed}
        if with_tokens:
            details["prefill"] = []
            details["tokens"] = [self.token(lp.token_id, lp.logprob) for lp in result.logprobs]
        return details

    async def events(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[dict]:
        """One event per token; the last carries the generated text (and details when asked)."""
        result, index = Result(), 0
        async for chunk in chunks:
            result.add(chunk)
            for j, lp in enumerate(chunk.logprobs):
                last = chunk.finish_reason is not None and j == len(chunk.logprobs) - 1
                event: dict[str, Any] = {"index": index, "token": self.token(lp.token_id, lp.logprob),
                                         "generated_text": None, "details": None}
                if last:
                    event["generated_text"] = self.text(result.token_ids)
                    if self.body.parameters.details:
                        event["details"] = self.details(result, with_tokens=False)
                index += 1
                yield event


# ---- TGI ----------------------------------------------------------------------------------------
@router.get("/info")
async def info(request: Request) -> dict:
    server: Server = request.app.state.server
    return {"model_id": server.model_name, "model_dtype": server.config.dtype,
            "max_input_tokens": server.llm.engine.max_model_len - 1,
            "max_total_tokens": server.llm.engine.max_model_len,
            "max_concurrent_requests": server.config.serve.max_batch_size, "router": "specplug",
            "version": "0.1.0"}


@router.post("/generate", dependencies=GUARDED)
async def generate(body: GenerateRequest, request: Request):
    server: Server = request.app.state.server
    job = await _job(server, body)
    result = await server.worker.collect(job)
    tokens = Tokens(server, body, job, "logprob")
    reply: dict[str, Any] = {"generated_text": tokens.text(result.token_ids)}
    if body.parameters.details:
        reply["details"] = tokens.details(result, with_tokens=True)
    return reply


@router.post("/generate_stream", dependencies=GUARDED)
async def generate_stream(body: GenerateRequest, request: Request):
    server: Server = request.app.state.server
    job = await _job(server, body)
    events = Tokens(server, body, job, "logprob").events(server.worker.stream(job))
    return StreamingResponse(sse(events), media_type="text/event-stream")


@router.post("/", dependencies=GUARDED)
async def compat(body: GenerateRequest, request: Request):
    """TGI's route for ``huggingface_hub.InferenceClient``: ``stream`` picks the answer's form."""
    if body.stream:
        return await generate_stream(body, request)
    return [await generate(body, request)]


# ---- SageMaker LMI --------------------------------------------------------------------------------
@router.get("/ping")
async def ping(request: Request) -> Response:
    return Response(status_code=200)


@router.post("/invocations", dependencies=GUARDED)
async def invocations(body: GenerateRequest, request: Request):
    server: Server = request.app.state.server
    job = await _job(server, body)
    tokens = Tokens(server, body, job, "log_prob")
    if body.stream:
        events = tokens.events(server.worker.stream(job))
        if server.config.serve.sagemaker_stream == "sse":
            return StreamingResponse(sse(events), media_type="text/event-stream")
        return StreamingResponse(json_lines(events), media_type="application/jsonlines")
    result = await server.worker.collect(job)
    reply: dict[str, Any] = {"generated_text": tokens.text(result.token_ids)}
    if body.parameters.details:
        reply["details"] = {**tokens.details(result, with_tokens=True), "inputs": body.inputs}
    return JSONResponse(reply)
