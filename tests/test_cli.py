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
    (["--set", "proposer.name=ngarm"], "unknown proposer 'ngarm' (did you mean 'ngram'?); known proposers: draft_model, eagle3, layerskip, ngram, none"),
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


def test_bench_table_prints_each_width_as_a_multiple_of_a_decode_step():
    from specplug.bench import format_table

    result = {"date": "2026-12-02", "machine": "a CPU", "torch": "2", "model": "m", "dtype": "float32",
              "num_speculative_tokens": 3, "prompts": 1, "max_new_tokens": 8, "kernels": "measured, weights packed",
              "forward_ms_by_width": {"1": 20.0, "2": 21.0, "4": 30.0}, "bandwidth_limit_tps": 50.0,
              "results": [], "greedy": False, "per_prompt": []}
    line = format_table(result).splitlines()[2]
    assert line.startswith("forward ms by width (x a decode step): T=1: 20.0 (1.00x), T=2: 21.0 (1.05x), "
                           "T=4: 30.0 (1.50x);")


# ---- the main job under real use (issue 10) ------------------------------------------------------------
def two_prompts(tmp_path):
    path = tmp_path / "two.jsonl"
    path.write_text('{"prompt": "One, two, three,"}\n{"prompt": "The history of the Roman Empire is"}\n')
    return path


@pytest.mark.parametrize("batch", ["1", "4"])
def test_text_mode_prints_every_prompt_in_full_in_order(tmp_path, batch):
    path = two_prompts(tmp_path)
    args = ["generate", "--prompts-file", str(path), "--max-new-tokens", "30", "--batch-size", batch]
    text = specplug(*args).stdout
    results = [json.loads(line) for line in specplug(*args, "--json").stdout.splitlines()]
    expected = "".join(f"--- prompt {r['index']}\n{r['text']}\n" for r in results)
    assert text == expected
    assert len(results[1]["text"]) > 40  # the second answer is printed whole, not cut or blank


def test_batch_size_is_capped_by_the_prompts_and_checked_against_memory():
    result = specplug("generate", "--prompt", "Hi", "--max-new-tokens", "4", "--batch-size", "1000")
    assert "tokens" in result.stderr  # one prompt: a cache of one row, not of 1000
    import torch

    from specplug.models.kv_cache import StaticKVCache
    from specplug.errors import SpecplugError

    with pytest.raises(SpecplugError, match=r"needs .* GB .* use at most \d+ rows"):
        StaticKVCache(30, 100_000, 3, 2051, 64, torch.float32)


def test_json_results_stream_in_order_and_resume_skips_what_is_done(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Count: {i}, {i + 1},"}) + "\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    first = [json.loads(line) for line in specplug("generate", "--prompts-file", str(prompts), "--max-new-tokens",
                                                   "6", "--batch-size", "2", "--json").stdout.splitlines()]
    out.write_text("".join(json.dumps(row) + "\n" for row in first[:2]))  # an interrupted run's file
    result = specplug("generate", "--prompts-file", str(prompts), "--max-new-tokens", "6", "--batch-size", "2",
                      "--output", str(out), "--resume", "--json")
    resumed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in resumed] == [2, 3, 4]  # only what was missing
    assert [r["token_ids"] for r in resumed] == [r["token_ids"] for r in first[2:]]
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4]
    again = specplug("generate", "--prompts-file", str(prompts), "--max-new-tokens", "6", "--output", str(out),
                     "--resume")
    assert "nothing to do" in again.stderr


def test_ctrl_c_keeps_the_finished_results(tmp_path):
    import signal
    import time

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Story number {i}:"}) + "\n" for i in range(40)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "specplug.cli", "generate", "--prompts-file", str(prompts),
                             "--max-new-tokens", "24", "--output", str(out), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    if proc.returncode == 0:  # the run ended before the interrupt was handled: then every result is there
        assert len(kept) == 40, stderr
        return
    assert proc.returncode == 130, stderr
    assert len(kept) >= 2 and [r["index"] for r in kept] == list(range(len(kept)))
    assert f"interrupted: {len(kept)} of 40 prompts done" in stderr and "Traceback" not in stderr
    # stdout got the same results, streamed (the interrupt may land between its line and the file's)
    assert len(kept) <= len(stdout.splitlines()) <= len(kept) + 1


def test_progress_bar_in_a_terminal(tmp_path):
    """Run under a pseudo-terminal: the bar shows on stderr; --quiet and a pipe turn it off."""
    import os
    import pty

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Number {i}:"}) + "\n" for i in range(3)))
    args = [sys.executable, "-m", "specplug.cli", "generate", "--prompts-file", str(prompts), "--max-new-tokens",
            "4", "--json"]

    def run_in_pty(extra):
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(sys.executable, [*args, *extra])
        chunks = []
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.waitpid(pid, 0)
        return b"".join(chunks).decode(errors="replace")

    shown = run_in_pty([])
    assert "3/3" in shown and "prompt" in shown and "tok/s" in shown
    assert "3/3" not in run_in_pty(["--quiet"])
    assert "3/3" not in specplug(*args[3:]).stderr  # stderr is a pipe: no bar


def test_resume_refuses_another_run_and_recovers_a_cut_off_line(tmp_path):
    """--resume continues only the run that wrote the file: other prompts or settings are refused in one
    line; a last line cut off by an interrupted write is dropped, noted and generated again."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Count: {i}, {i + 1},"}) + "\n" for i in range(4)))
    out = tmp_path / "out.jsonl"
    args = ["generate", "--prompts-file", str(prompts), "--max-new-tokens", "5", "--batch-size", "2", "--quiet"]
    specplug(*args, "--output", str(out))
    whole = out.read_text()
    lines = whole.splitlines()
    out.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2])  # killed mid-write
    resumed = specplug(*args, "--output", str(out), "--resume")
    assert "last line of" in resumed.stderr and "cut off" in resumed.stderr
    assert [json.loads(line)["token_ids"] for line in out.read_text().splitlines()] == \
           [json.loads(line)["token_ids"] for line in lines]
    assert "nothing to do" in specplug(*args, "--output", str(out), "--resume", "--set", "proposer.name=none").stderr
    finished = out.read_text()

    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"Other {i}"}) + "\n" for i in range(4)))
    for extra, message in [(["--prompts-file", str(other)], "holds prompt 0 of another prompts file"),
                           (["--max-new-tokens", "9"], "was written with other settings"),
                           (["--set", "sampling.temperature=0.8"], "was written with other settings")]:
        refused = specplug(*args, *extra, "--output", str(out), "--resume", check=False)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert out.read_text() == finished  # refused runs leave the file as it was


@pytest.mark.parametrize("target,message", [("missing-dir/out.jsonl", "does not exist: create it first"),
                                            (".", "is a directory: give a file path")])
def test_an_unwritable_output_is_refused_before_the_model_loads(tmp_path, target, message):
    result = specplug("generate", "--prompt", "Hi", "--output", str(tmp_path / target), check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_each_line_samples_its_own_stream_unless_it_names_a_seed(tmp_path):
    prompts = tmp_path / "p.jsonl"
    line = {"prompt": "Once upon a time, in a small village,"}
    prompts.write_text("".join(json.dumps(item) + "\n" for item in
                               [line, line, line, {**line, "seed": 7}, {**line, "seed": 7}]))
    run = ["generate", "--prompts-file", str(prompts), "--max-new-tokens", "8", "--batch-size", "5", "--json",
           "--set", "sampling.temperature=1.0"]
    texts = [json.loads(row)["token_ids"] for row in specplug(*run).stdout.splitlines()]
    assert len({tuple(t) for t in texts[:3]}) == 3  # no seed of their own: independent samples
    assert texts[3] == texts[4]  # the same seed: the same sample, whatever its batch companions
    alone = tmp_path / "alone.jsonl"
    alone.write_text(json.dumps({**line, "seed": 7}) + "\n")
    assert json.loads(specplug(*run[:2], str(alone), *run[3:]).stdout)["token_ids"] == texts[3]
    assert [json.loads(row)["token_ids"] for row in specplug(*run).stdout.splitlines()] == texts  # reproducible
