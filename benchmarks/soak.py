"""Soak test of `specplug serve`: a few thousand mixed requests through the real server, bounded in time.

The real `specplug serve` command runs in its own process (API key on, admin endpoint on). Concurrent
clients send a shuffled mix: OpenAI completions and chat, streaming or not, TGI and LMI, each greedy
request on a random strategy (none, ngram, big, auto, or the default) and compared with the same request
run alone before the soak; sampled requests with seeds (a seed must give the same answer every time);
temperatures below the greedy epsilon (must equal greedy); clients that disconnect mid-stream; and bad
requests that must get their intended 4xx. Live swaps of the default strategy (and refused broken ones)
run beside them. It reports errors (anything but the intended answers), mismatches, the server's resident
memory over time, and the rows and requests left at the end.

    .venv/bin/python benchmarks/soak.py [--requests 3000] [--concurrency 12] [--max-seconds 900] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import as_text, cpu_model, start_server  # noqa: E402

HERE = Path(__file__).parent
KEY, ADMIN = "soak-api-key", "soak-admin-token"
AUTH = {"Authorization": f"Bearer {KEY}"}
STRATEGIES = (None, "none", "ngram", "big", "auto")
KINDS = {"completion": 30, "chat": 15, "tgi": 10, "lmi": 5, "sampled": 10, "tiny_temperature": 5,
         "disconnect": 10, "bad": 15}
LIMIT = 2_000_000
BAD = [  # (path, raw body or JSON, headers, expected status)
    ("/v1/completions", b"{not json", {}, 400),
    ("/v1/completions", {"prompt": "Hi", "colour": 2}, {}, 400),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 0}, {}, 400),
    ("/v1/completions", {"prompt": "Hi", "strategy": "nope"}, {}, 400),
    ("/v1/completions", b'{"prompt": "a\\ud800b"}', {}, 400),
    ("/v1/completions", b'{"prompt": "caf\xe9"}', {}, 400),
    ("/v1/completions", b'{"prompt": "' + b"a" * (LIMIT + 10) + b'"}', {}, 413),
    ("/v1/completions", {"prompt": "Hi"}, {"Authorization": "Bearer wrong"}, 401),
    ("/v1/chat/completions", {"messages": []}, {}, 400),
    ("/generate", {"inputs": "Hi", "parameters": {"top_p": 3}}, {}, 422),
    ("/generate", b"inputs=Hi", {"content-type": "text/plain"}, 422),
    ("/v1/nothing", {}, {}, 404),
]


def load_prompts() -> list[dict]:
    items = []
    for name in ("grounded.jsonl", "open_ended.jsonl", "repetitive.jsonl"):
        lines = [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]
        items += lines[:4]
    return items


def messages(item: dict) -> list[dict]:
    return item["messages"] if "messages" in item else [{"role": "user", "content": item["prompt"]}]


class Soak:
    def __init__(self, base: str, prompts: list[dict], tokenizer, seed: int):
        self.base, self.prompts = base, prompts
        self.texts = [as_text(p, tokenizer) for p in prompts]
        self.max_new = [(8, 12, 16, 24)[i % 4] for i in range(len(prompts))]
        self.rng = random.Random(seed)
        self.lone: dict[tuple[str, int], object] = {}
        self.seeded: dict[tuple[int, int, str], str] = {}
        self.outcomes: Counter = Counter()
        self.errors: list[str] = []
        self.mismatches: list[str] = []

    # ---- one request of each kind ---------------------------------------------------------------
    async def ask(self, client: httpx.AsyncClient, route: str, i: int, strategy: str | None = None,
                  stream: bool = False, **sampling) -> object:
        """The answer to prompt ``i`` by ``route``: text (OpenAI, LMI) or token ids (TGI)."""
        n = self.max_new[i]
        extra = {"strategy": strategy} if strategy else {}
        if route in ("completion", "chat"):
            path = "/v1/completions" if route == "completion" else "/v1/chat/completions"
            body = {"max_tokens": n, "temperature": 0, **sampling, **extra, "stream": stream}
            body.update({"prompt": self.texts[i]} if route == "completion" else {"messages": messages(self.prompts[i])})
            if not stream:
                reply = await self._post(client, path, body)
                choice = reply["choices"][0]
                return choice["text"] if route == "completion" else choice["message"]["content"]
            pieces = []
            async for event in self._events(client, path, body):
                for choice in event.get("choices", []):
                    pieces.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
            return "".join(pieces)
        if route == "tgi":
            body = {"inputs": self.texts[i], "parameters": {"max_new_tokens": n, "details": True, **extra}}
            if not stream:
                reply = await self._post(client, "/generate", body)
                return [t["id"] for t in reply["details"]["tokens"]]
            return [e["token"]["id"] async for e in self._events(client, "/generate_stream", body)]
        body = {"inputs": self.texts[i], "parameters": {"max_new_tokens": n, **extra}}
        return (await self._post(client, "/invocations", body))["generated_text"]

    async def _post(self, client, path, body) -> dict:
        response = await client.post(path, json=body, headers=AUTH, timeout=600)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    async def _events(self, client, path, body):
        async with client.stream("POST", path, json=body, headers=AUTH, timeout=600) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if line.startswith("data: {") or line.startswith("data:{"):
                    event = json.loads(line.split(":", 1)[1])
                    if "error" in event:
                        raise RuntimeError(f"{path}: error event {event['error']}")
                    yield event

    async def lone_answers(self, client) -> None:
        for route in ("completion", "chat", "tgi", "lmi"):
            for i in range(len(self.prompts)):
                self.lone[(route, i)] = await self.ask(client, route, i, "none")

    async def one(self, client, kind: str) -> None:
        i = self.rng.randrange(len(self.prompts))
        strategy, stream = self.rng.choice(STRATEGIES), self.rng.random() < 0.5
        try:
            if kind in ("completion", "chat", "tgi", "lmi"):
                got = await self.ask(client, kind, i, strategy, stream and kind != "lmi")
                self._check(kind, i, got, f"{kind} strategy={strategy} stream={stream}")
            elif kind == "tiny_temperature":
                got = await self.ask(client, "completion", i, strategy, stream, temperature=1e-38)
                self._check("completion", i, got, "temperature 1e-38")
            elif kind == "sampled":  # a seed gives one answer per strategy (auto's widths follow the load)
                seed, strategy = self.rng.randrange(4), self.rng.choice(("none", "ngram", "big"))
                got = await self.ask(client, "completion", i, strategy, stream, temperature=0.9, seed=seed)
                first = self.seeded.setdefault((i, seed, strategy), got)
                if got != first:
                    self.mismatches.append(f"seeded prompt {i} seed {seed} ({strategy}) gave two answers")
            elif kind == "disconnect":
                await self._leave_early(client, i)
            else:
                await self._bad(client)
            self.outcomes[kind] += 1
        except Exception as exc:  # anything but the intended answer
            self.errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")

    def _check(self, route: str, i: int, got, what: str) -> None:
        if got != self.lone[(route, i)]:
            self.mismatches.append(f"prompt {i} {what}: {got!r} != lone {self.lone[(route, i)]!r}")

    async def _leave_early(self, client, i: int) -> None:
        body = {"prompt": self.texts[i], "max_tokens": 200, "stream": True, "temperature": 0}
        async with client.stream("POST", "/v1/completions", json=body, headers=AUTH, timeout=600) as response:
            if response.status_code != 200:
                raise RuntimeError(f"disconnect: HTTP {response.status_code}")
            lines = 0
            async for _ in response.aiter_lines():
                lines += 1
                if lines >= self.rng.randrange(1, 12):
                    break

    async def _bad(self, client) -> None:
        path, body, headers, status = self.rng.choice(BAD)
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = await client.post(path, headers={**AUTH, "content-type": "application/json", **headers},
                                     timeout=600, **kwargs)
        if response.status_code != status or "Traceback" in response.text:
            raise RuntimeError(f"bad request {path} expected {status}, got {response.status_code}: "
                               f"{response.text[:200]}")


async def swaps(base: str, stop: asyncio.Event, every: float, record: Counter) -> None:
    cycle = ["none", "auto", "big", "ngram"]
    n = 0
    async with httpx.AsyncClient(base_url=base) as client:
        while not stop.is_set():
            await asyncio.sleep(every)
            n += 1
            broken = n % 3 == 0
            body = {"proposer": {"name": "nope"}} if broken else {"serve": {"default_strategy": cycle[n % 4]}}
            response = await client.post("/admin/config", json=body, timeout=120,
                                         headers={"Authorization": f"Bearer {ADMIN}"})
            record["refused" if response.status_code == 400 else "applied" if response.status_code == 200
                   else f"unexpected {response.status_code}"] += 1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def memory(pid: int, stop: asyncio.Event, samples: list, started: float) -> None:
    while not stop.is_set():
        samples.append((round(time.perf_counter() - started, 1), round(rss_mb(pid), 1)))
        await asyncio.sleep(2.0)


async def run(args, base: str, pid: int, tokenizer) -> dict:
    soak = Soak(base, load_prompts(), tokenizer, args.seed)
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=base, limits=limits) as client:
        await soak.lone_answers(client)
        kinds = [k for k, weight in KINDS.items() for _ in range(weight)]
        plan = [soak.rng.choice(kinds) for _ in range(args.requests)]
        stop, samples, swap_record = asyncio.Event(), [], Counter()
        started = time.perf_counter()
        background = [asyncio.create_task(memory(pid, stop, samples, started)),
                      asyncio.create_task(swaps(base, stop, args.swap_every, swap_record))]

        async def worker():
            while plan and time.perf_counter() - started < args.max_seconds:
                await soak.one(client, plan.pop())

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*background)
        await asyncio.sleep(2.0)  # let the last aborts land
        metrics = (await client.get("/metrics")).text
    gauge = {name: next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name)), None)
             for name in ("specplug:num_requests_running", "specplug:num_requests_waiting")}
    warm = [mb for t, mb in samples if t >= wall * 0.25]
    return {
        "requests_sent": sum(soak.outcomes.values()) + len(soak.errors), "planned": args.requests,
        "wall_s": round(wall, 1), "by_kind": dict(soak.outcomes), "errors": len(soak.errors),
        "error_samples": soak.errors[:10], "mismatches": len(soak.mismatches),
        "mismatch_samples": soak.mismatches[:10], "swaps": dict(swap_record),
        "rss_mb_start": samples[0][1] if samples else None,
        "rss_mb_after_warmup_min": min(warm) if warm else None, "rss_mb_after_warmup_max": max(warm) if warm else None,
        "rss_mb_end": samples[-1][1] if samples else None, "rss_samples": samples[:: max(1, len(samples) // 40)],
        "left_running": gauge["specplug:num_requests_running"], "left_waiting": gauge["specplug:num_requests_waiting"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--swap-every", type=float, default=15.0, help="seconds between live swaps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from specplug.models.loader import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["SPECPLUG_ADMIN_TOKEN"] = ADMIN
    config = {"proposer": {"name": "ngram", "min_n": 1, "max_n": 4}, "num_speculative_tokens": 3, "adaptive_k": True,
              "max_model_len": 1024,
              "serve": {"max_batch_size": 8, "api_key": KEY, "max_request_bytes": LIMIT,
                        "strategies": {"big": {"proposer": "ngram", "num_speculative_tokens": 5}}}}
    proc = start_server(config, port)
    try:
        report = asyncio.run(run(args, f"http://127.0.0.1:{port}", proc.pid, tokenizer))
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    log = proc.stdout.read()
    report = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "threads": os.cpu_count(),
              "concurrency": args.concurrency, **report, "tracebacks_in_log": log.count("Traceback"),
              "exit_status": proc.returncode}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
