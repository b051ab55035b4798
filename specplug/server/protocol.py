"""What every protocol shares: turning request fields into a ``Job`` (with one-line 4xx errors), and
streaming bodies (Server-Sent Events or JSON lines)."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request

from specplug.config.checks import sampling_problem
from specplug.errors import SpecplugError
from specplug.metadata import SamplingParams
from specplug.prompts import Prompt, check_text, encode_prompt
from specplug.server.state import Server
from specplug.server.worker import Job


class ApiError(Exception):
    """A client mistake: answered with ``status`` and a message naming the problem and the fix."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


def bearer_matches(request: Request, secret: str) -> bool:
    """Whether the request's ``Authorization: Bearer ...`` is ``secret`` (compared in constant time)."""
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {secret}".encode())


def require_api_key(request: Request) -> None:
    """The inference routes' dependency: 401 unless the server is open or the client sent its API key."""
    key = request.app.state.server.api_key
    if key is not None and not bearer_matches(request, key):
        raise ApiError("missing or wrong API key: send 'Authorization: Bearer <key>' (the OpenAI client's "
                       "api_key, huggingface_hub's token)", status=401)


async def make_job(server: Server, prompt: Prompt | list[int], max_new_tokens: int | None, **fields) -> Job:
    """A ``Job`` from protocol-neutral fields (see ``job``), made off the event loop: tokenizing a long
    prompt never stalls the other clients."""
    return await asyncio.to_thread(job, server, prompt, max_new_tokens, **fields)


def job(server: Server, prompt: Prompt | list[int], max_new_tokens: int | None, *,
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        seed: int | None = None, stop: str | Sequence[str] | None = None, strategy: str | None = None,
        logprobs: int | None = None, max_tokens_param: str = "max_tokens") -> Job:
    """A ``Job`` from protocol-neutral fields; ``None`` means the config's default."""
    config = server.config
    try:
        chosen = server.strategy(strategy)
    except SpecplugError as exc:
        raise ApiError(str(exc), param="strategy") from None
    stops = _stops(stop, config.stop)
    try:
        prompt_ids = _token_ids(server, prompt) if _is_token_ids(prompt) else _encode(server, prompt)
    except SpecplugError as exc:
        raise ApiError(str(exc), param="prompt") from None
    if not prompt_ids:
        raise ApiError("the prompt is empty: send at least one token of text", param="prompt")
    context = server.llm.engine.max_model_len
    if len(prompt_ids) >= context:
        raise ApiError(f"the prompt has {len(prompt_ids)} tokens; this server's context is {context} tokens "
                       "(prompt and output): shorten the prompt", param="prompt")
    wanted = config.max_new_tokens if max_new_tokens is None else max_new_tokens
    if wanted < 1:
        raise ApiError(f"{max_tokens_param} must be at least 1 (got {wanted})", param=max_tokens_param)
    if len(prompt_ids) + wanted > context:
        raise ApiError(f"{max_tokens_param} is {wanted} but the prompt has {len(prompt_ids)} tokens and the "
                       f"context is {context}: ask for at most {context - len(prompt_ids)}", param=max_tokens_param)
    params = sampling(config.sampling, temperature, top_p, top_k, seed)
    if not params.greedy and not server.can_sample:
        raise ApiError(f"this server's verifier ('{config.verifier.name}') cannot sample: send temperature 0, "
                       "or serve with verifier rejection", param="temperature")
    return Job(prompt_ids, wanted, params, stops, chosen, logprobs)


def _encode(server: Server, prompt: Prompt) -> list[int]:
    if isinstance(prompt, str):
        check_text(prompt, "the prompt")
    else:
        for i, message in enumerate(prompt):
            check_text(message["content"], f"messages[{i}].content")
    return encode_prompt(server.llm.tokenizer, prompt)


def _is_token_ids(prompt) -> bool:
    return isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)


def _token_ids(server: Server, prompt: list[int]) -> list[int]:
    vocab = server.llm.model.shape.vocab_size
    if any(not 0 <= t < vocab for t in prompt):
        raise ApiError(f"the prompt holds a token id outside the vocabulary (0..{vocab - 1})", param="prompt")
    return list(prompt)


def sampling(default: SamplingParams, temperature: float | None, top_p: float | None, top_k: int | None,
             seed: int | None) -> SamplingParams:
    temperature = default.temperature if temperature is None else temperature
    top_p = default.top_p if top_p is None else top_p
    top_k = default.top_k if top_k is None else top_k
    problem = sampling_problem(temperature, top_k, top_p, seed)
    if problem is not None:
        raise ApiError(problem[1], param=problem[0])
    # a request without a seed gets a fresh one (OpenAI semantics); the config's seed is for offline runs
    return SamplingParams(float(temperature), top_k, float(top_p), seed)


def _stops(stop: str | Sequence[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if stop is None:
        return default
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > 16:
        raise ApiError(f"at most 16 stop strings (got {len(stops)})", param="stop")
    for i, text in enumerate(stops):
        try:
            check_text(text, f"stop[{i}]")
        except SpecplugError as exc:
            raise ApiError(str(exc), param="stop") from None
    return tuple(s for s in stops if s)


def refuse_unsupported(fields: dict[str, Any], defaults: dict[str, Any]) -> None:
    """400 for a field set to a value this server cannot honour (its default is accepted)."""
    for name, allowed in defaults.items():
        value = fields.get(name)
        if value is not None and value != allowed:
            raise ApiError(f"'{name}' = {value!r} is not supported by this server (leave it out or use "
                           f"{allowed!r})", param=name)


async def sse(events: AsyncIterator[Any], openai: bool = False) -> AsyncIterator[bytes]:
    """Server-Sent Events: ``data: <json>`` per event (then ``data: [DONE]`` for OpenAI)."""
    async for event in _until_error(events, openai):
        yield b"data: " + json.dumps(event).encode() + b"\n\n"
    if openai:
        yield b"data: [DONE]\n\n"


async def json_lines(events: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for event in _until_error(events, openai=False):
        yield json.dumps(event).encode() + b"\n"


async def _until_error(events: AsyncIterator[Any], openai: bool) -> AsyncIterator[Any]:
    """The events; an engine failure mid-stream ends the stream with one error event (the status is sent)."""
    try:
        async for event in events:
            yield event
    except SpecplugError as exc:
        yield {"error": {"message": str(exc), "type": "server_error"}} if openai else \
            {"error": str(exc), "error_type": "generation"}


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])
