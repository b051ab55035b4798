"""Held-out acceptance of several EAGLE-3 heads on one ``specplug make-eagle3`` run's held-out answers.

make-eagle3 reports the acceptance of the head it trained on its own held-out prompts. This scores other
heads (the shipped one, heads trained on other data) on the same held-out answers, so heads trained on
different prompts are compared on one set. The run is named by the arguments make-eagle3 was given; its
data must already be in the cache (nothing is decoded here).

    .venv/bin/python benchmarks/eagle3_heldout.py --config configs/eagle3.yaml --tokens 300000 \\
        --head shipped=smollm2-135m-eagle3 --head new=/tmp/head-self-300k
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from specplug.bench import machine_description
from specplug.config import load_config
from specplug.eagle3_command import DEFAULT_ANSWER_TOKENS, built_in_prompts, split, work_dir
from specplug.eagle3_data import generate
from specplug.eagle3_train import acceptance
from specplug.llm import LLM
from specplug.models.eagle3 import Eagle3Head
from specplug.proposers.eagle3 import head_directory
from specplug.prompts import read_prompts_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/eagle3.yaml")
    parser.add_argument("--tokens", type=int, required=True, help="the run's --tokens")
    parser.add_argument("--prompt-source", default="self", help="the run's --prompt-source")
    parser.add_argument("--prompts-file", help="the run's --prompts-file")
    parser.add_argument("--head", action="append", required=True, metavar="LABEL=HEAD",
                        help="a shipped head's name or a directory")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    llm = LLM(load_config(args.config, ["proposer.name=none"]))
    prompts = (read_prompts_file(args.prompts_file) if args.prompts_file else
               built_in_prompts(llm, args.prompt_source, args.tokens, DEFAULT_ANSWER_TOKENS, 32, sys.stderr))
    heads = {label: Eagle3Head.load(head_directory(spec), torch.float32, torch.device("cpu"))
             for label, spec in (item.split("=", 1) for item in args.head)}
    layers = next(iter(heads.values())).shape.layers
    work = work_dir(llm.model_dir, layers, DEFAULT_ANSWER_TOKENS, prompts,
                    "file" if args.prompts_file else args.prompt_source)
    if not (work / "shards").is_dir():
        parser.error(f"no make-eagle3 data at {work}: run make-eagle3 with the same arguments first")
    samples = generate(llm.model, llm.tokenizer, llm.eos_token_ids, prompts, layers, DEFAULT_ANSWER_TOKENS,
                       args.tokens, work / "shards")
    held = split(samples)[1]
    embed = llm.model.embed.detach()
    scores = {label: [round(a, 4) for a in acceptance(head, embed, held, args.steps)] for label, head in heads.items()}
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine_description(), "work": str(work),
                      "held_out_prompts": len(held), "held_out_answer_tokens": sum(s.answer_tokens for s in held),
                      "acceptance_by_position": scores}, indent=2))


if __name__ == "__main__":
    main()
