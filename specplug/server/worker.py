"""One thread owns the engine; HTTP handlers talk to it through ``EngineWorker``.

Handlers ``submit`` a ``Job`` and iterate its ``Chunk``s (one per engine step that gave the job
tokens). Everything that touches the engine (adding and aborting rows, swapping the default strategy)
runs on the engine thread between steps, queued with ``call``. A handler that stops iterating (the
client went away) aborts its row: the slot is freed before the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from specplug.engine.batch import TokenLogprob
from specplug.engine.engine import Engine, Request, StepOutput
from specplug.engine.faults import cause
from specplug.hosting.strategy import Strategy
from specplug.errors import SpecplugError
from specplug.metadata import SamplingParams
from specplug.server.metrics import Metrics
from specplug.engine.text import TextStream

logger = logging.getLogger("specplug.server")


@dataclass
class Job:
    """One generation request, whatever protocol it came in by."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    strategy: Strategy | None = None  # None: the default when the row starts
    logprobs: int | None = None  # None: none; n: each token's logprob and the n most likely


@dataclass
class Chunk:
    token_ids: list[int]
    text: str  # new text safe to show (stop strings and unfinished characters held back)
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None  # "stop" or "length" on the last chunk
    eos: bool = False  # the last chunk ended on an end-of-sequence token (not a stop string)


@dataclass
class Result:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "length"
    eos: bool = False

    def add(self, chunk: Chunk) -> None:
        self.text += chunk.text
        self.token_ids += chunk.token_ids
        self.logprobs += chunk.logprobs
        self.finish_reason, self.eos = chunk.finish_reason or self.finish_reason, chunk.eos


class EngineWorker:
    def __init__(self, engine: Engine, tokenizer, metrics: Metrics):
        self.engine, self.tokenizer, self.metrics = engine, tokenizer, metrics
        self.commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.sinks: dict[int, Callable[[object], None]] = {}
        self.ids = itertools.count()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="specplug-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout=10)

    def call(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the engine thread before its next step."""
        self.commands.put(command)
        self.wake.set()

    @property
    def running(self) -> int:
        return len(self.sinks)

    # ---- the handler side -----------------------------------------------------------------------
    async def stream(self, job: Job) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[object] = asyncio.Queue()
        request_id = next(self.ids)
        request = Request(request_id, job.prompt_ids, job.max_new_tokens, job.sampling, job.stop, job.strategy,
                          job.logprobs)
        text = TextStream(self.tokenizer, job.stop)
        self.call(lambda: self._add(request, lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item)))
        finished = False
        try:
            while not finished:
                item = await inbox.get()
                if isinstance(item, Exception):
                    finished = True
                    raise item
                assert isinstance(item, StepOutput)
                finished = item.finish_reason is not None
                eos = finished and bool(item.new_token_ids) and item.new_token_ids[-1] in self.engine.eos_token_ids
                yield Chunk(item.new_token_ids, text.push(item.new_token_ids, finished), item.logprobs or [],
                            item.finish_reason, eos)
        finally:
            if not finished:
                self.call(lambda: self._abort(request_id))

    async def collect(self, job: Job) -> Result:
        result = Result()
        async for chunk in self.stream(job):
            result.add(chunk)
        return result

    # ---- the engine thread ----------------------------------------------------------------------
    def _add(self, request: Request, sink: Callable[[object], None]) -> None:
        try:
            self.engine.add_request(request)
        except SpecplugError as exc:
            sink(exc)
            return
        self.sinks[request.request_id] = sink
        self.metrics.submitted(request)

    def _abort(self, request_id: int) -> None:
        if self.sinks.pop(request_id, None) is not None:
            self.engine.abort(request_id)
            self.metrics.aborted(request_id)

    def _run(self) -> None:
        while not self.stopping:
            while not self.commands.empty():
                self.commands.get()()
            self.metrics.gauges(self.engine)
            if not self.engine.has_unfinished():
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            self._step()

    def _step(self) -> None:
        started = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception as exc:  # not attributable to a row or a plugin (the engine fails those alone)
            self._fail_all(exc)
            return
        self.metrics.stepped(self.engine, outputs, time.perf_counter() - started)
        self.metrics.faulted(self.engine.faults.take())
        for out in outputs:
            sink = self.sinks.get(out.request_id)
            if sink is None:
                continue
            if out.finish_reason is not None:
                del self.sinks[out.request_id]
            sink(out if out.finish_reason != "error" else SpecplugError(f"the request failed: {out.row.error}"))

    def _fail_all(self, exc: Exception) -> None:
        """Fail every request in flight and leave the engine empty and clean for the next ones."""
        logger.error("specplug: an engine step failed (%s); %d requests in flight were dropped", cause(exc),
                     len(self.sinks))
        error = SpecplugError(f"the engine failed ({cause(exc)}); the request was dropped")
        for request_id, sink in list(self.sinks.items()):
            self.engine.abort(request_id)
            self.metrics.aborted(request_id, "error")
            sink(error)
        self.sinks.clear()
        self.engine.waiting.clear()
        for row in list(self.engine.rows):  # rows without a sink (none expected)
            self.engine.abort(row.request.request_id)
