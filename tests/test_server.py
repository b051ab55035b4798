"""``specplug serve`` over real HTTP on localhost, driven by the real ``openai`` and ``huggingface_hub``
clients (and httpx for raw bodies). Greedy outputs are compared with plain decoding in the engine."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from specplug.config import load_config
from specplug.engine.engine import Request
from specplug.server.app import ADMIN_TOKEN_ENV, create_app
from specplug.server.state import Server
from tests.prompts import GROUNDED, OPEN_ENDED

pytestmark = pytest.mark.slow
TOKEN = "test-admin-token"
STRATEGIES = ["serve.max_batch_size=4", "serve.strategies.none={proposer: none}",
              "serve.strategies.big={proposer: ngram, num_speculative_tokens: 4}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """A real server (ngram default, `none`, `big` and `auto` strategies) in a thread of this process."""
    os.environ[ADMIN_TOKEN_ENV] = TOKEN
    yield from serve_in_a_thread(Server(load_config("configs/ngram.yaml", STRATEGIES)))
    del os.environ[ADMIN_TOKEN_ENV]


def serve_in_a_thread(server: Server):
    """Serve ``server`` with uvicorn on a free localhost port; yields (server, base URL), then stops it."""
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.05)
    yield server, f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def openai_client(served):
    from openai import OpenAI

    return OpenAI(base_url=served[1] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def plain(llm):
    """Plain greedy tokens (and logprobs) of a prompt in the embedded engine, memoised."""
    cache = {}

    def run(prompt_ids: list[int], max_new: int):
        key = (tuple(prompt_ids), max_new)
        if key not in cache:
            outputs = list(llm.engine.run([Request("plain", list(prompt_ids), max_new, logprobs=2)]))
            cache[key] = ([t for o in outputs for t in o.new_token_ids], [lp for o in outputs for lp in o.logprobs])
        return cache[key]

    return run


def as_text(llm, prompt) -> str:
    """A prompt of tests/prompts.py as raw text (chat messages rendered by the model's template)."""
    if isinstance(prompt, str):
        return prompt
    return llm.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def metric(base: str, name: str, **labels) -> float:
    text = httpx.get(base + "/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def admin(base: str, body, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(base + "/admin/config", json=body, headers=headers, timeout=60)


# ---- OpenAI ---------------------------------------------------------------------------------------
def test_completions_equal_plain_greedy_streamed_or_not(served, openai_client, plain, llm):
    prompt = as_text(llm, GROUNDED[0])
    ids = llm.encode(prompt)
    reference, _ = plain(ids, 40)
    finish = "stop" if reference[-1] in llm.eos_token_ids else "length"  # stop: the model ended it (EOS)
    whole = openai_client.completions.create(model="x", prompt=prompt, max_tokens=40, temperature=0)
    assert whole.choices[0].finish_reason == finish
    assert whole.usage.completion_tokens == len(reference) and whole.usage.prompt_tokens == len(ids)
    assert whole.choices[0].text == llm.tokenizer.decode(reference, skip_special_tokens=True)
    pieces = []
    for chunk in openai_client.completions.create(model="x", prompt=prompt, max_tokens=40, temperature=0,
                                                  stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
            last_finish = chunk.choices[0].finish_reason
        else:
            assert chunk.usage.completion_tokens == len(reference)
    assert "".join(pieces) == whole.choices[0].text and last_finish == finish
    assert metric(served[1], "specplug:spec_decode_num_accepted_tokens_total", strategy="ngram") > 0


def test_chat_streamed_and_whole_agree_and_stop_strings_cut(openai_client):
    messages = [{"role": "user", "content": "Count from one to ten in words."}]
    whole = openai_client.chat.completions.create(model="x", messages=messages, max_tokens=30, temperature=0)
    text = whole.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in openai_client.chat.completions.create(
        model="x", messages=messages, max_tokens=30, temperature=0, stream=True) if c.choices)
    assert streamed == text and text
    word = text.split()[2]
    stopped = openai_client.chat.completions.create(model="x", messages=messages, max_tokens=30, temperature=0,
                                                    stop=[word])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(word)]
    streamed_stop = "".join(c.choices[0].delta.content or "" for c in openai_client.chat.completions.create(
        model="x", messages=messages, max_tokens=30, temperature=0, stop=[word], stream=True) if c.choices)
    assert streamed_stop == stopped.choices[0].message.content  # the stop string never leaks into a chunk


def test_logprobs_equal_plain_decoding(openai_client, plain, llm):
    prompt = as_text(llm, GROUNDED[1])
    reference, logprobs = plain(llm.encode(prompt), 24)
    got = openai_client.completions.create(model="x", prompt=prompt, max_tokens=24, temperature=0, logprobs=2)
    values = got.choices[0].logprobs.token_logprobs
    assert len(values) == 24
    assert max(abs(a - b.logprob) for a, b in zip(values, logprobs)) < 1e-4
    chat = openai_client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and all(len(c.top_logprobs) == 3 for c in content)
    assert all(c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)


def test_per_request_strategy_including_off(served, openai_client, plain, llm):
    base = served[1]
    prompt = as_text(llm, GROUNDED[0])
    reference, _ = plain(llm.encode(prompt), 30)
    before = {s: metric(base, "specplug:spec_decode_num_draft_tokens_total", strategy=s) for s in ("ngram", "big")}
    off = openai_client.completions.create(model="x", prompt=prompt, max_tokens=30, temperature=0,
                                           extra_body={"strategy": "none"})
    assert metric(base, "specplug:spec_decode_num_draft_tokens_total", strategy="ngram") == before["ngram"]
    big = openai_client.completions.create(model="x", prompt=prompt, max_tokens=30, temperature=0,
                                           extra_body={"strategy": "big"})
    assert metric(base, "specplug:spec_decode_num_draft_tokens_total", strategy="big") > before["big"]
    text = llm.tokenizer.decode(reference, skip_special_tokens=True)
    assert off.choices[0].text == big.choices[0].text == text
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="unknown strategy 'ngarm'"):
        openai_client.completions.create(model="x", prompt="Hi", max_tokens=3, extra_body={"strategy": "ngarm"})


def test_seeded_sampling_is_independent_of_batch_companions(served, openai_client):
    def ask(seed=7):
        return openai_client.completions.create(model="x", prompt=OPEN_ENDED[1], max_tokens=24, temperature=0.8,
                                                seed=seed).choices[0].text

    alone = ask()
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, ask(seed=7 if i == 2 else 100 + i)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[2] == alone
    assert len({results[0], results[1], results[3]}) > 1  # the companions really sampled


# ---- live swaps and admin ---------------------------------------------------------------------------
def test_swap_during_a_stream_keeps_it_identical_to_plain(served, plain, llm):
    base = served[1]
    prompt = as_text(llm, GROUNDED[1])
    reference, _ = plain(llm.encode(prompt), 60)
    text = []
    with httpx.stream("POST", base + "/v1/completions", timeout=120,
                      json={"prompt": prompt, "max_tokens": 60, "temperature": 0, "stream": True}) as response:
        for n, line in enumerate(response.iter_lines()):
            if n == 4:  # mid-stream: plain decoding becomes the default
                assert admin(base, {"serve": {"default_strategy": "none"}}).json()["default_strategy"] == "none"
            if line.startswith("data: {"):
                text.append(json.loads(line[6:])["choices"][0]["text"])
    assert "".join(text) == llm.tokenizer.decode(reference, skip_special_tokens=True)
    drafted = metric(base, "specplug:spec_decode_num_draft_tokens_total", strategy="ngram")
    httpx.post(base + "/v1/completions", json={"prompt": prompt, "max_tokens": 20, "temperature": 0}, timeout=60)
    assert metric(base, "specplug:spec_decode_num_draft_tokens_total", strategy="ngram") == drafted  # new default
    assert admin(base, {"serve": {"default_strategy": "ngram"}}).status_code == 200


def test_a_swap_of_the_default_leaves_a_seeded_stream_of_a_named_strategy_as_it_was(served, llm):
    """The soak found it: every swap rebuilt every strategy and reset every row's budget, so a seeded
    request that named its strategy drew differently when another setting changed mid-stream."""
    base = served[1]
    body = {"prompt": as_text(llm, GROUNDED[0]), "max_tokens": 80, "temperature": 1.0, "seed": 11,
            "strategy": "ngram", "stream": True}

    def stream(swaps: bool) -> str:
        text = []
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as response:
            for n, line in enumerate(response.iter_lines()):
                if swaps and n % 3 == 2:  # the default goes back and forth under the stream
                    default = "big" if n % 6 == 2 else "ngram"
                    assert admin(base, {"serve": {"default_strategy": default}}).status_code == 200
                if line.startswith("data: {"):
                    text.append(json.loads(line[6:])["choices"][0]["text"])
        return "".join(text)

    alone = stream(swaps=False)
    assert stream(swaps=True) == alone
    assert admin(base, {"serve": {"default_strategy": "ngram"}}).status_code == 200


def test_broken_swaps_are_refused_and_the_old_strategy_keeps_serving(served, caplog):
    import logging

    base = served[1]
    refused = metric(base, "specplug:strategy_swaps_total", outcome="refused")
    caplog.set_level(logging.ERROR, logger="specplug.server")
    for body, reason in [({"serve": {"strategies": {"bad": {"proposer": "nope"}}}}, "unknown proposer 'nope'"),
                         ({"proposer": {"name": "ngram", "max_m": 3}}, "has no option 'max_m'"),
                         ({"serve": {"default_strategy": "missing"}}, "not a configured strategy"),
                         ({"model": "other"}, "cannot change while serving"),
                         ({"serve": {"drain_timeout_s": 5}}, "serve.drain_timeout_s cannot change while serving"),
                         ({"serve": {"api_key": 12}}, "serve.api_key must be a string or null (its value is not shown)"),
                         ({"serve": {"strategies": {"wide": {"proposer": "ngram", "num_speculative_tokens": 9}}}},
                          "'wide' drafts up to 9 tokens; this engine was started for at most 4")]:
        response = admin(base, body)
        assert response.status_code == 400 and reason in response.json()["error"], (body, response.text)
        assert reason in caplog.records[-1].getMessage()  # logged, as a refused file reload is
    assert metric(base, "specplug:strategy_swaps_total", outcome="refused") == refused + 7
    assert served[0].default_strategy == "ngram"
    assert httpx.post(base + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).status_code == 200


def test_admin_needs_the_token(served):
    base = served[1]
    assert admin(base, {"serve": {"default_strategy": "none"}}, token=None).status_code == 401
    assert admin(base, {"serve": {"default_strategy": "none"}}, token="wrong").status_code == 401
    assert served[0].default_strategy == "ngram"


def test_client_disconnect_frees_the_row(served):
    server, base = served
    aborted = metric(base, "specplug:request_success_total", finished_reason="abort")
    with httpx.stream("POST", base + "/v1/completions", timeout=60,
                      json={"prompt": OPEN_ENDED[1], "max_tokens": 500, "stream": True}) as response:
        for n, _ in enumerate(response.iter_lines()):
            if n == 6:
                break  # the client goes away mid-stream
    deadline = time.time() + 10
    while server.llm.engine.rows and time.time() < deadline:
        time.sleep(0.05)
    assert not server.llm.engine.rows and not server.worker.sinks
    assert metric(base, "specplug:request_success_total", finished_reason="abort") == aborted + 1


# ---- TGI and SageMaker ------------------------------------------------------------------------------
def test_tgi_with_the_huggingface_hub_client(served, plain, llm):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=served[1])
    prompt = as_text(llm, GROUNDED[0])
    reference, logprobs = plain(llm.encode(prompt), 20)
    out = client.text_generation(prompt, max_new_tokens=20, details=True)
    assert out.generated_text == llm.tokenizer.decode(reference, skip_special_tokens=True)
    assert out.details.finish_reason == "length" and out.details.generated_tokens == 20
    assert [t.id for t in out.details.tokens] == reference
    assert max(abs(t.logprob - lp.logprob) for t, lp in zip(out.details.tokens, logprobs)) < 1e-4
    events = list(client.text_generation(prompt, max_new_tokens=20, details=True, stream=True))
    assert [e.token.id for e in events] == reference
    assert events[-1].generated_text == out.generated_text and events[-1].details.finish_reason == "length"
    assert all(e.generated_text is None for e in events[:-1])
    word = out.generated_text.split()[1]
    stopped = client.text_generation(prompt, max_new_tokens=20, details=True, stop=[word])
    assert stopped.details.finish_reason == "stop_sequence" and stopped.generated_text.endswith(word)
    assert client.text_generation(prompt, max_new_tokens=4) == llm.tokenizer.decode(reference[:4])


def test_sagemaker_invocations(served, plain, llm):
    base = served[1]
    assert httpx.get(base + "/ping").status_code == 200
    prompt = as_text(llm, GROUNDED[1])
    reference, _ = plain(llm.encode(prompt), 12)
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 12, "details": True}}
    whole = httpx.post(base + "/invocations", json=body, timeout=60).json()
    assert whole["details"]["finish_reason"] == "length" and whole["details"]["generated_tokens"] == 12
    assert [t["id"] for t in whole["details"]["tokens"]] == reference
    assert all(t["log_prob"] <= 0 for t in whole["details"]["tokens"])
    with httpx.stream("POST", base + "/invocations", json={**body, "stream": True}, timeout=60) as response:
        assert response.headers["content-type"].startswith("application/jsonlines")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["token"]["id"] for line in lines] == reference
    assert lines[-1]["generated_text"] == whole["generated_text"]
    word = whole["generated_text"].split()[1]
    stopped = httpx.post(base + "/invocations", timeout=60, json={
        "inputs": prompt, "parameters": {"max_new_tokens": 12, "details": True, "stop_sequences": [word]}}).json()
    assert stopped["details"]["finish_reason"] == "stop_sequence"


# ---- bad input -------------------------------------------------------------------------------------
LONG = "word " * 2500


@pytest.mark.parametrize("path,body,status,message", [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "Hi", "strategy": "nope"}, 400, "unknown strategy 'nope'"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 0}, 400, "max_tokens must be at least 1"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 100000}, 400, "ask for at most"),
    ("/v1/completions", {"prompt": LONG}, 400, "shorten the prompt"),
    ("/v1/completions", {"prompt": "Hi", "n": 2}, 400, "'n' = 2 is not supported"),
    ("/v1/completions", {"prompt": "Hi", "colour": 2}, 400, "unknown field 'colour'"),
    ("/v1/completions", {"prompt": "Hi", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "Hi", "seed": 2**70}, 400, "seed"),
    ("/v1/completions", {"prompt": [999999]}, 400, "outside the vocabulary"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages is empty"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": -3}}, 422, "max_new_tokens"),
    ("/generate", {"inputs": "Hi", "parameters": {"grammar": {"type": "json"}}}, 422, "'grammar'"),
    ("/generate", {"parameters": {}}, 422, "'inputs' is required"),
    ("/invocations", {"inputs": "Hi", "parameters": {"top_p": 3}}, 422, "top_p"),
])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(served, path, body, status, message):
    base = served[1]
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(base + path, headers={"content-type": "application/json"}, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    text = error["message"] if isinstance(error, dict) else error
    assert message in text and "Traceback" not in text and "\n" not in text
    assert httpx.get(base + "/health").json() == {"status": "ok"}


def test_metrics_and_health(served):
    base = served[1]
    assert httpx.get(base + "/health").status_code == 200
    names = {s.name for f in text_string_to_metric_families(httpx.get(base + "/metrics").text) for s in f.samples}
    for name in ("specplug:spec_decode_num_drafts_total", "specplug:spec_decode_num_accepted_tokens_per_pos_total",
                 "specplug:request_success_total", "specplug:generation_tokens_total",
                 "specplug:time_to_first_token_seconds_bucket", "specplug:inter_token_latency_seconds_bucket",
                 "specplug:num_requests_running"):
        assert name in names, name


# ---- the real command: file watch, SIGHUP, SIGTERM drain ----------------------------------------------
def test_serve_command_swaps_on_file_change_and_sighup_and_drains_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys

    import yaml

    config = tmp_path / "serve.yaml"
    data = {"proposer": {"name": "ngram"}, "serve": {"max_batch_size": 2, "drain_timeout_s": 60}}
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "specplug.cli", "serve", "--config", str(config), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)

        def swaps(outcome):
            return metric(base, "specplug:strategy_swaps_total", outcome=outcome)

        def wait_for(condition):
            end = time.time() + 20
            while not condition() and time.time() < end:
                time.sleep(0.2)
            return condition()

        data["serve"]["default_strategy"] = "none"
        config.write_text(yaml.safe_dump(data))  # the watcher notices
        assert wait_for(lambda: swaps("applied") == 1)
        config.write_text(yaml.safe_dump({**data, "proposer": {"name": "nope"}}))  # refused, logged; old one serves
        assert wait_for(lambda: swaps("refused") == 1)
        config.write_text("proposer: {name: ngram\n")  # not even YAML: refused and counted the same way
        assert wait_for(lambda: swaps("refused") == 2)
        data["serve"]["default_strategy"] = "ngram"
        config.write_text(yaml.safe_dump(data))
        assert wait_for(lambda: swaps("applied") == 2)
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: swaps("applied") == 3)

        lines = []
        with httpx.stream("POST", base + "/v1/completions", timeout=120,
                          json={"prompt": "Once upon a time", "max_tokens": 40, "stream": True}) as response:
            for n, line in enumerate(response.iter_lines()):
                if n == 2:
                    proc.send_signal(signal.SIGTERM)  # drain: this stream still finishes
                if line.startswith("data: {"):
                    lines.append(json.loads(line[6:]))
        assert lines[-1]["choices"][0]["finish_reason"] in ("length", "stop")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert "refused" in log and "unknown proposer 'nope'" in log and "not valid YAML" in log, log
    assert "Traceback" not in log, log
