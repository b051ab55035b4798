"""The CLI contract, run as a user runs it: a subprocess on the real model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def specplug(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "specplug.cli", *args], capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "Monday, Tuesday, Wednesday, Thursday, Monday, Tuesday,"},
             {"messages": [{"role": "user", "content": "Name three colours."}]},
             {"prompt": "The capital of France is"}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_generate_json_batch_in_input_order(prompts_file):
    out = specplug("generate", "--config", "configs/ngram.yaml", "--prompts-file", str(prompts_file),
                   "--max-new-tokens", "12", "--batch-size", "2", "--json").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert set(row) >= {"text", "token_ids", "finish_reason", "stats"}
        assert row["finish_reason"] in ("stop", "length") and 1 <= len(row["token_ids"]) <= 12
        assert set(row["stats"]) >= {"proposer", "num_speculative_tokens", "target_forwards", "draft_tokens",
                                     "accepted_tokens", "acceptance_rate", "mean_accepted_per_step",
                                     "tokens_per_second"}
    assert rows[0]["stats"]["draft_tokens"] > 0  # the repeated days give the n-gram something to find
    plain = specplug("generate", "--config", "configs/none.yaml", "--prompts-file", str(prompts_file),
                     "--max-new-tokens", "12", "--json").stdout
    assert [json.loads(line)["token_ids"] for line in plain.splitlines()] == [r["token_ids"] for r in rows]


def test_generate_streams_text_and_prints_a_summary():
    result = specplug("generate", "--prompt", "Monday, Tuesday, Wednesday,", "--max-new-tokens", "8")
    assert result.stdout.strip()
    assert "[ngram k=3] 8 tokens" in result.stderr and "finish: length" in result.stderr


def test_stop_string_cuts_text():
    args = ["generate", "--json", "--prompt", "Monday, Tuesday, Wednesday, Thursday,", "--max-new-tokens", "20"]
    free = json.loads(specplug(*args).stdout)
    assert "Saturday" in free["text"]
    stopped = json.loads(specplug(*args, "--set", "stop=[Saturday]").stdout)
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == free["text"][: free["text"].index("Saturday")]


@pytest.mark.parametrize("args, message", [
    (["--set", "proposer.name=ngarm"], "unknown proposer 'ngarm' (did you mean 'ngram'?); known proposers: draft_model, layerskip, ngram, none"),
    (["--set", "num_speculative_tokens=0"], "num_speculative_tokens must be an integer from 1 to 64"),
    (["--set", "model=/no/such/dir"], "model '/no/such/dir' not found"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
])
def test_bad_input_gives_one_clear_line(args, message):
    result = specplug("generate", "--prompt", "hi", *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_malformed_prompts_file_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    result = specplug("generate", "--prompts-file", str(path), check=False)
    assert result.returncode == 2 and f"{path}:2: not valid JSON" in result.stderr


def test_bench_compares_three_methods_and_checks_outputs(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Monday, Tuesday, Wednesday, Thursday, Friday, Monday, Tuesday,"}) + "\n")
    result = json.loads(specplug("bench", "--config", "configs/ngram.yaml", "--prompts-file", str(path),
                                 "--max-new-tokens", "16", "--json").stdout)
    assert [r["method"] for r in result["results"]] == ["hf_generate", "plain", "ngram"]
    assert result["greedy"] and result["identical"]
    assert all(r["tokens_per_second"] > 0 for r in result["results"])
