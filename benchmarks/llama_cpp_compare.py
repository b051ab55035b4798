"""Plain greedy decoding in llama.cpp (llama-cpp-python) on the same F32 weights and the same token ids
as ``specplug bench`` (issue 22). Two steps, two virtual environments:

1. With the project's venv, write the prompts' token ids and an F32 GGUF of the model:

       .venv/bin/python benchmarks/llama_cpp_compare.py prepare OUT_DIR benchmarks/grounded.jsonl ...

   The F32 GGUF is made by llama.cpp's own quantize step (F32, requantize allowed) from the alias's
   Q4_1 file: the same dequantized weights the embedded engine computes with.
2. With a venv holding llama-cpp-python built from its source distribution (kept outside the
   project's dependencies), time it:

       /tmp/lcp-venv/bin/python benchmarks/llama_cpp_compare.py run OUT_DIR MAX_NEW_TOKENS THREADS

tokens/s counts prefill as ``specplug bench`` does: generated tokens over the wall time of each call.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def prepare(out: Path, prompt_files: list[str]) -> None:
    from specplug.models.loader import DEFAULT_MODEL, alias_gguf, load_tokenizer, resolve_model
    from specplug.prompts import encode_prompt, read_prompts_file

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(resolve_model(DEFAULT_MODEL))
    ids = {Path(f).stem: [encode_prompt(tokenizer, p) for p in read_prompts_file(f)] for f in prompt_files}
    (out / "prompts.json").write_text(json.dumps(ids))
    (out / "source.txt").write_text(str(alias_gguf(DEFAULT_MODEL)))


def run(out: Path, max_new: int, threads: int) -> None:
    import llama_cpp

    f32 = out / "model-f32.gguf"
    if not f32.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = llama_cpp.LLAMA_FTYPE_ALL_F32, True
        source = (out / "source.txt").read_text().strip()
        if llama_cpp.llama_model_quantize(source.encode(), str(f32).encode(), params) != 0:
            raise SystemExit("llama.cpp could not write the F32 GGUF")
    model = llama_cpp.Llama(str(f32), n_ctx=2048, n_threads=threads, n_batch=512, verbose=False)
    results = {}
    for name, prompts in json.loads((out / "prompts.json").read_text()).items():
        model(prompts[0][:32], max_tokens=8, temperature=0.0)  # warm-up
        tokens, seconds = 0, 0.0
        for ids in prompts:
            model.reset()
            start = time.perf_counter()
            completion = model.create_completion(ids, max_tokens=max_new, temperature=0.0, top_k=1)
            seconds += time.perf_counter() - start
            tokens += completion["usage"]["completion_tokens"]
        results[name] = {"prompts": len(prompts), "tokens": tokens, "seconds": round(seconds, 2),
                         "tokens_per_second": round(tokens / seconds, 1)}
        print(name, results[name], file=sys.stderr)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "llama_cpp_python": llama_cpp.__version__,
                      "threads": threads, "max_new_tokens": max_new, "weights": "F32 GGUF from the alias's Q4_1",
                      "plain_greedy": results}, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]), sys.argv[3:])
    else:
        run(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
