"""``specplug serve`` survives its clients and its plugins: real HTTP on localhost, the real ``openai`` and
``huggingface_hub`` clients, the real model. A bad request, a raising proposer or a failing row never takes
the other requests with it; oversized bodies, missing API keys and broken bodies get one-line 4xx answers."""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest

from specplug import hookimpl
from specplug.config import load_config
from specplug.plugins import load_registry, make_plugin_manager
from specplug.proposers.ngram import NgramProposer
from specplug.server.app import warn_if_exposed
from specplug.server.state import Server
from specplug.verifiers.rejection import RejectionSampler
from tests.prompts import GROUNDED, OPEN_ENDED
from tests.test_server import as_text, metric, serve_in_a_thread

pytestmark = pytest.mark.slow
KEY = "sk-test-robustness"
AUTH = {"Authorization": f"Bearer {KEY}"}


class EveryThirdCallRaises(NgramProposer):
    name = "flaky"

    def __init__(self):
        super().__init__(1, 3)
        self.calls = 0

    def propose(self, requests):
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("the flaky proposer fell over")
        return super().propose(requests)


class RefusesTopK7(RejectionSampler):
    """Verifies as the default verifier, but raises for a batch holding a row sampled with top_k 7."""

    def verify(self, batch):
        if any(not s.greedy and s.top_k == 7 for s in batch.sampling):
            raise ValueError("top_k 7 is cursed")
        return super().verify(batch)


class FaultyPlugins:
    @hookimpl
    def register_proposers(self, register):
        register.proposer("flaky", lambda context: EveryThirdCallRaises())

    @hookimpl
    def register_verifiers(self, register):
        register.verifier("cursed", lambda: RefusesTopK7())


@pytest.fixture(scope="module")
def served():
    """A server with an API key, a `flaky` strategy and a verifier that fails rows sampled with top_k 7."""
    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(FaultyPlugins())
    config = load_config("configs/ngram.yaml", ["serve.max_batch_size=6", "verifier.name=cursed",
                                                "serve.strategies.flaky={proposer: flaky}", f"serve.api_key={KEY}"])
    yield from serve_in_a_thread(Server(config, registry=load_registry(pm)))


@pytest.fixture(scope="module")
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served[1] + "/v1", api_key=KEY, max_retries=0)


def complete(client, prompt, max_tokens, temperature=0.0, **extra):
    return client.completions.create(model="x", prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                                     **extra).choices[0]


def stream_text(base, body) -> tuple[str, list[dict]]:
    events = []
    with httpx.stream("POST", base + "/v1/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    return "".join(e["choices"][0]["text"] for e in events if "choices" in e), events


def in_threads(calls: dict) -> dict:
    results = {}
    threads = [threading.Thread(target=lambda k=k, f=f: results.__setitem__(k, f())) for k, f in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_tiny_temperature_a_raising_proposer_and_a_failing_row_each_stay_alone(served, client, llm):
    """Concurrent greedy streams finish identical to their lone answers while, beside them, a temperature
    of 1e-38 decodes greedily, a proposer raises mid-stream (its row falls back to plain decoding) and one
    row's verification raises (that request alone gets an error)."""
    server, base = served
    prompts = [as_text(llm, p) for p in GROUNDED[:2] + OPEN_ENDED[:1]]
    alone = [complete(client, p, 48).text for p in prompts]
    faults = metric(base, "specplug:proposer_faults_total", strategy="flaky")
    calls = {f"greedy{i}": (lambda p=p: stream_text(base, {"prompt": p, "max_tokens": 48, "temperature": 0})[0])
             for i, p in enumerate(prompts)}
    calls["tiny"] = lambda: complete(client, prompts[0], 48, temperature=1e-38).text
    calls["flaky"] = lambda: stream_text(base, {"prompt": prompts[1], "max_tokens": 48, "temperature": 0,
                                                "strategy": "flaky"})[0]
    calls["cursed"] = lambda: httpx.post(base + "/v1/completions", headers=AUTH, timeout=300, json={
        "prompt": prompts[2], "max_tokens": 48, "temperature": 0.7, "top_k": 7})
    results = in_threads(calls)
    assert [results[f"greedy{i}"] for i in range(3)] == alone
    assert results["tiny"] == alone[0]  # below the greedy epsilon: greedy, not NaN
    assert results["flaky"] == alone[1]  # the proposer raised; its row went on without drafts
    assert metric(base, "specplug:proposer_faults_total", strategy="flaky") > faults
    cursed = results["cursed"]
    assert cursed.status_code == 500 and "top_k 7 is cursed" in cursed.json()["error"]["message"]
    assert "\n" not in cursed.json()["error"]["message"]
    text, events = stream_text(base, {"prompt": prompts[2], "max_tokens": 8, "temperature": 0.7, "top_k": 7})
    assert events and "error" in events[-1] and "top_k 7 is cursed" in events[-1]["error"]["message"]
    assert httpx.get(base + "/health").json() == {"status": "ok"} and not server.llm.engine.rows
    assert complete(client, prompts[0], 48).text == alone[0]  # and it serves on, unchanged


@pytest.mark.parametrize("route", ["completions", "chat", "tgi", "lmi"])
def test_temperature_and_top_p_extremes_on_every_route(served, client, llm, route):
    """Every finite value the API accepts samples (no NaN, no error); below the greedy epsilon, or with a
    top-p that keeps one token, the answer is the greedy one."""
    base = served[1]
    prompt = as_text(llm, GROUNDED[0])

    def ask(temperature, top_p):
        if route == "completions":
            return complete(client, prompt, 6, temperature=temperature, top_p=top_p).text
        if route == "chat":
            return client.chat.completions.create(model="x", messages=GROUNDED[0], max_tokens=6,
                                                  temperature=temperature, top_p=top_p).choices[0].message.content
        path = "/generate" if route == "tgi" else "/invocations"
        response = httpx.post(base + path, headers=AUTH, timeout=60, json={"inputs": prompt, "parameters": {
            "max_new_tokens": 6, "do_sample": True, "temperature": temperature, "top_p": top_p}})
        assert response.status_code == 200, response.text
        return response.json()["generated_text"]

    greedy_text = ask(0.0, 1.0)
    for temperature in (1e-300, 1e-38, 9e-6, 1e-5, 0.7, 1e300, 1.7e308):
        for top_p in (5e-324, 0.5, 1.0):
            text = ask(temperature, top_p)
            assert isinstance(text, str) and text
            if temperature < 1e-5 or top_p < 1e-8:
                assert text == greedy_text, (temperature, top_p)


def test_an_oversized_body_is_refused_with_413_before_it_is_read(served):
    base = served[1]
    limit = served[0].config.serve.max_request_bytes
    body = json.dumps({"prompt": "a" * (limit + 10), "max_tokens": 2}).encode()
    started = time.perf_counter()
    response = httpx.post(base + "/v1/completions", content=body, headers={**AUTH, "content-type": "application/json"},
                          timeout=60)
    assert response.status_code == 413 and "serve.max_request_bytes" in response.json()["error"]["message"]
    assert time.perf_counter() - started < 10

    def chunks():  # no Content-Length: counted as it arrives
        for i in range(0, len(body), 65536):
            yield body[i: i + 65536]

    chunked = httpx.post(base + "/generate", content=chunks(), timeout=60,
                         headers={**AUTH, "content-type": "application/json"})
    assert chunked.status_code == 413 and "at most" in chunked.json()["error"]
    assert httpx.get(base + "/health").status_code == 200


def test_a_large_prompt_being_tokenized_stalls_no_other_client(served, client, llm):
    """A prompt just under the body limit takes a second or more to tokenize; meanwhile /health keeps
    answering (it shares the GIL with the tokenizer on 2 cores, so each probe may wait a few hundred ms;
    before the fix it waited for the whole tokenization)."""
    base = served[1]
    limit = served[0].config.serve.max_request_bytes
    big = {"prompt": "word " * ((limit - 200) // 5), "max_tokens": 2}
    latencies, done = [], threading.Event()
    answer = {}

    def send_big():
        answer["big"] = httpx.post(base + "/v1/completions", json=big, headers=AUTH, timeout=120)
        done.set()

    started = time.perf_counter()
    sender = threading.Thread(target=send_big)
    sender.start()
    while not done.is_set():
        t = time.perf_counter()
        assert httpx.get(base + "/health", timeout=30).status_code == 200
        latencies.append(time.perf_counter() - t)
        time.sleep(0.02)
    sender.join()
    took = time.perf_counter() - started
    assert answer["big"].status_code == 400 and "shorten the prompt" in answer["big"].json()["error"]["message"]
    print(f"large prompt refused after {took:.2f} s; /health latency max {max(latencies):.3f} s over "
          f"{len(latencies)} probes")
    assert took > 0.5 and len(latencies) >= 5  # the probes ran while it was being tokenized
    assert max(latencies) < took / 2  # before: /health waited for the whole tokenization


def test_the_api_key_guards_the_inference_routes_only(served, llm):
    from huggingface_hub import InferenceClient
    from openai import AuthenticationError, OpenAI

    base = served[1]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for path, body in (("/v1/completions", {"prompt": "Hi", "max_tokens": 2}), ("/generate", {"inputs": "Hi"}),
                           ("/invocations", {"inputs": "Hi"}), ("/", {"inputs": "Hi"})):
            response = httpx.post(base + path, json=body, headers=headers, timeout=60)
            assert response.status_code == 401, (path, headers, response.text)
            assert KEY not in response.text and "API key" in response.text
        assert httpx.get(base + "/v1/models", headers=headers).status_code == 401
    for path in ("/health", "/ping", "/metrics", "/info"):
        assert httpx.get(base + path).status_code == 200, path
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0).completions.create(model="x", prompt="Hi",
                                                                                       max_tokens=2)
    assert InferenceClient(base_url=base, token=KEY).text_generation("Hi", max_new_tokens=2)
    assert httpx.post(base + "/invocations", json={"inputs": "Hi"}, headers=AUTH, timeout=60).status_code == 200


def test_the_running_gauge_returns_to_zero_after_clients_leave(served):
    server, base = served

    def leave_early(i):
        with httpx.stream("POST", base + "/v1/completions", headers=AUTH, timeout=60, json={
                "prompt": f"{OPEN_ENDED[1]} ({i})", "max_tokens": 400, "stream": True}) as response:
            for n, _ in enumerate(response.iter_lines()):
                if n == 4:
                    break

    in_threads({i: (lambda i=i: leave_early(i)) for i in range(3)})
    deadline = time.time() + 20
    while metric(base, "specplug:num_requests_running") and time.time() < deadline:
        time.sleep(0.1)
    assert metric(base, "specplug:num_requests_running") == 0 and not server.llm.engine.rows
    assert metric(base, "specplug:num_requests_waiting") == 0


@pytest.mark.parametrize("path,content,content_type,message", [
    ("/v1/completions", b'{"prompt": "a\\ud800b"}', "application/json", "lone UTF-16 surrogate (U+D800)"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x\\udfffy"}]}', "application/json",
     "messages[0].content holds a lone UTF-16 surrogate"),
    ("/v1/completions", b'{"prompt": "Hi", "stop": ["\\ud83d"]}', "application/json", "stop[0] holds a lone"),
    ("/generate", b'{"inputs": "a\\ud800"}', "application/json", "lone UTF-16 surrogate"),
    ("/v1/completions", b'{"prompt": "caf\xe9"}', "application/json", "not valid UTF-8 (byte 0xe9 at offset 15)"),
    ("/v1/completions", b"[" * 50000 + b"]" * 50000, "application/json", "nested too deeply"),
    ("/generate", b"{" * 30000, "application/json", "not valid JSON"),
    ("/v1/completions", b'{"prompt": "Hi"}', "text/plain", "must be a JSON object, sent with Content-Type"),
    ("/generate", b"inputs=Hi", "application/x-www-form-urlencoded", "must be a JSON object"),
    ("/v1/nothing-here", b"{}", "application/json", "no route /v1/nothing-here"),
])
def test_broken_bodies_get_the_projects_one_line_error(served, path, content, content_type, message):
    base = served[1]
    response = httpx.post(base + path, content=content, headers={**AUTH, "content-type": content_type}, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert "detail" not in body
    text = body["error"]["message"] if path.startswith("/v1/") else body["error"]
    assert message in text and "\n" not in text and "Traceback" not in text


def test_binding_beyond_loopback_without_a_key_warns(served, caplog, monkeypatch):
    server = served[0]
    with caplog.at_level(logging.WARNING, logger="specplug.server"):
        warn_if_exposed(server, "127.0.0.1")
        warn_if_exposed(server, "0.0.0.0")  # it has a key: quiet
        assert not caplog.records
        monkeypatch.setattr(type(server), "api_key", property(lambda self: None))
        warn_if_exposed(server, "::1")
        warn_if_exposed(server, "localhost")
        assert not caplog.records
        warn_if_exposed(server, "0.0.0.0")
    assert len(caplog.records) == 1 and "no API key is set" in caplog.records[0].getMessage()
