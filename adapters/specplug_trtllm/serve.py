"""``python -m specplug_trtllm.serve --model DIR --config configs/ngram.yaml``: TensorRT-LLM's own
OpenAI-compatible server (``tensorrt_llm.serve.OpenAIServer``) over an ``LLM`` with the specplug drafter.

UNTESTED: TensorRT-LLM cannot be installed on the machines this was written on. The server class and
its constructor are read from TensorRT-LLM's source (1.1, 1.2); keywords it does not take are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys

from specplug.errors import SpecplugError
from specplug_trtllm.building import build_speculative_config
from specplug_trtllm.install import require_tensorrt_llm


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m specplug_trtllm.serve")
    parser.add_argument("--model", required=True, help="HF model directory (the target)")
    parser.add_argument("--config", required=True, help="specplug config file (the proposer; swapped live on edit)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        require_tensorrt_llm()
        speculative, llm_kwargs = build_speculative_config(args.config, args.model, args.max_batch_size,
                                                           args.max_seq_len)
    except SpecplugError as error:
        print(f"specplug: error: {error}", file=sys.stderr)
        return 2
    from tensorrt_llm import LLM
    from tensorrt_llm.serve import OpenAIServer

    llm = LLM(model=args.model, speculative_config=speculative, **llm_kwargs)
    offered = {"llm": llm, "model": args.model, "server_role": None, "metadata_server_cfg": None}
    accepted = inspect.signature(OpenAIServer.__init__).parameters
    server = OpenAIServer(**{k: v for k, v in offered.items() if k in accepted})
    asyncio.run(server(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
