"""Same-run A/B of auto's value of calling a dear proposer: as shipped (``VALUE_FALLS`` / ``VALUE_RISES``)
against the update before (the rising weight both ways), for eagle3 under auto at k = 1 and k <= 3, prompt
by prompt interleaved with plain decoding (``compare_proposers.run_file``), in one process.

    .venv/bin/python benchmarks/auto_value_ab.py > benchmarks/results/eagle3-auto-value-ab-$(date +%F).json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from specplug.bench import machine_description
from specplug.config import load_config
from specplug.hosting import auto
from specplug.llm import LLM
from specplug.prompts import read_prompts_file

sys.path.insert(0, str(Path(__file__).parent))
import compare_proposers  # noqa: E402

SHIPPED = auto.VALUE_FALLS
CONFIGS = {"auto-k1": "benchmarks/eagle3-auto-k1.yaml", "auto": "benchmarks/eagle3-auto.yaml"}
FILES = ("benchmarks/open_ended_heldout.jsonl", "benchmarks/open_ended.jsonl", "benchmarks/grounded.jsonl")
BEFORE: set[int] = set()  # id() of the strategies that run with the update before


def run_with_its_update(run):
    def wrapped(llm, ids, max_new_tokens):
        auto.VALUE_FALLS = auto.VALUE_RISES if id(llm) in BEFORE else SHIPPED
        try:
            return run(llm, ids, max_new_tokens)
        finally:
            auto.VALUE_FALLS = SHIPPED
    return wrapped


def main() -> None:
    compare_proposers._engine_run = run_with_its_update(compare_proposers._engine_run)
    plain = LLM(load_config("configs/none.yaml"))
    strategies = {"none": plain}
    for label, path in CONFIGS.items():
        for update in ("new", "old"):
            strategies[f"{label} {update}"] = llm = compare_proposers.variant(plain, path)
            if update == "old":
                BEFORE.add(id(llm))
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(), "files": []}
    for path in FILES:
        prompts = [plain.encode(p) for p in read_prompts_file(path)]
        run = compare_proposers.run_file(strategies, prompts, 128)
        report["files"].append({"prompts_file": path, "rows": compare_proposers.summarise(strategies, run)})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
