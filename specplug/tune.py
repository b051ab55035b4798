"""``specplug tune layerskip``: Bayesian optimisation (Optuna, TPE) of the layerskip skip set.

Search space as in Draft & Verify: for every layer but the first and the last, whether its attention
and whether its MLP is skipped. Objective: measured tokens/s of greedy layerskip decoding on the
calibration prompts (acceptance recorded beside it). The first trials are sparse random masks (each
sub-layer skipped with probability SPARSE_SKIP): uniform random masks skip half the model, where
acceptance is near zero and TPE learns nothing. A layerskip config given to the tuner is its first
trial. The study is stored (SQLite) so a run can resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from specplug.arguments import add_config_args, check_sizes
from specplug.bench import machine_description, measure
from specplug.config import Config, PluginChoice, config_to_dict
from specplug.errors import SpecplugError
from specplug.llm import LLM
from specplug.models.loader import cache_dir
from specplug.prompts import Prompt
from specplug.proposers import layerskip, none

SPARSE_SKIP = 0.08


def skip_set(trial, num_layers: int) -> tuple[list[int], list[int]]:
    middle = range(1, num_layers - 1)
    attention = [i for i in middle if trial.suggest_categorical(f"attn_{i}", [False, True])]
    mlp = [i for i in middle if trial.suggest_categorical(f"mlp_{i}", [False, True])]
    return attention, mlp


def sparse_masks(count: int, num_layers: int, seed: int) -> list[dict[str, bool]]:
    rng = random.Random(seed)
    masks = []
    while len(masks) < count:
        mask = {f"{part}_{i}": rng.random() < SPARSE_SKIP for i in range(1, num_layers - 1) for part in ("attn", "mlp")}
        if any(mask.values()):
            masks.append(mask)
    return masks


def starting_mask(config: Config, num_layers: int) -> dict[str, bool] | None:
    """The skip set of the config the tuner is given (when it is a layerskip config) as trial parameters:
    it runs first, so the config written is never one measured slower than the one given."""
    if config.proposer.name != layerskip.NAME:
        return None
    options = config.proposer.options
    both = set(options.get("skip_layers") or [])
    attention, mlp = both | set(options.get("skip_attention") or []), both | set(options.get("skip_mlp") or [])
    mask = {f"{part}_{i}": i in chosen for i in range(1, num_layers - 1)
            for part, chosen in (("attn", attention), ("mlp", mlp))}
    return mask if any(mask.values()) else None


def tune_layerskip(config: Config, prompts: list[Prompt], trials: int, out: Path, *,
                   max_skip_ratio: float = 1.0, max_new_tokens: int = 48, study_path: Path | None = None,
                   seed: int = 0, progress: bool = True) -> dict[str, Any]:
    import optuna

    if trials < 1:
        raise SpecplugError(f"--trials must be >= 1 (got {trials})")
    if not 0 < max_skip_ratio <= 1:
        raise SpecplugError(f"--max-skip-ratio must be in (0, 1] (got {max_skip_ratio})")
    plain = LLM(dataclasses.replace(config, proposer=PluginChoice(none.NAME)))
    layers = plain.model.shape.num_layers
    encoded = [plain.encode(p) for p in prompts]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_path = study_path or default_study_path(out)
    study_path.parent.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{study_path.resolve()}"
    startup = max(1, min(10, trials // 3))
    study = optuna.create_study(study_name=layerskip.NAME, storage=storage, direction="maximize",
                                load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup))
    if not study.trials:
        start = starting_mask(config, layers)
        for mask in [start] if start else []:
            study.enqueue_trial(mask)
        for mask in sparse_masks(startup, layers, seed):
            study.enqueue_trial(mask)

    def objective(trial) -> float:
        attention, mlp = skip_set(trial, layers)
        skipped = (len(attention) + len(mlp)) / (2 * layers)
        if not skipped or skipped > max_skip_ratio:
            raise optuna.TrialPruned(f"skips {skipped:.0%} of the sub-layers")
        result = measure(plain.variant(layerskip.NAME, skip_attention=attention, skip_mlp=mlp), encoded,
                         max_new_tokens)
        for key in ("acceptance_rate", "mean_accepted_per_step"):
            trial.set_user_attr(key, result[key])
        trial.set_user_attr("skipped_fraction", skipped)
        return result["tokens_per_second"]

    remaining = trials - len([t for t in study.trials if t.state.is_finished()])
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, show_progress_bar=progress)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise SpecplugError("no trial completed (every skip set was pruned): raise --max-skip-ratio")
    best = study.best_trial
    attention, mlp = skip_set(optuna.trial.FixedTrial(best.params), layers)
    return write_tuned_config(config, out, attention, mlp, best, plain, encoded, max_new_tokens, len(study.trials))


def write_tuned_config(config: Config, out: Path, attention: list[int], mlp: list[int], best, plain: LLM,
                       encoded: list[list[int]], max_new_tokens: int, trials: int) -> dict[str, Any]:
    """Re-measure the chosen set against plain decoding in one run and write a ready config."""
    tuned = plain.variant(layerskip.NAME, skip_attention=attention, skip_mlp=mlp)
    base, chosen = measure(plain, encoded, max_new_tokens), measure(tuned, encoded, max_new_tokens)
    data = config_to_dict(dataclasses.replace(
        config, proposer=PluginChoice(layerskip.NAME, {"skip_attention": attention, "skip_mlp": mlp})))
    summary = {
        "date": date.today().isoformat(), "machine": machine_description(), "trials": trials,
        "calibration_prompts": len(encoded), "max_new_tokens": max_new_tokens,
        "skipped_fraction": round(best.user_attrs["skipped_fraction"], 4),
        "tokens_per_second": round(chosen["tokens_per_second"], 2),
        "plain_tokens_per_second": round(base["tokens_per_second"], 2),
        "acceptance_rate": round(chosen["acceptance_rate"], 3),
        "mean_accepted_per_step": round(chosen["mean_accepted_per_step"], 3),
    }
    header = "".join(f"# {line}\n" for line in (
        "Written by `specplug tune layerskip` (Optuna TPE over skipped attention/MLP sub-layers).",
        f"{summary['date']}, {summary['machine']}: {trials} trials on {len(encoded)} calibration prompts, "
        f"{max_new_tokens} new tokens each.",
        f"Measured in one run: layerskip {summary['tokens_per_second']} tok/s (acceptance "
        f"{summary['acceptance_rate']}, {summary['mean_accepted_per_step']} accepted/step, "
        f"{summary['skipped_fraction']:.0%} of sub-layers skipped) vs plain {summary['plain_tokens_per_second']} tok/s.",
    ))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return {**summary, "skip_attention": attention, "skip_mlp": mlp, "out": str(out)}


def default_study_path(out: Path) -> Path:
    """Where the study of a tuned config lives: the user's cache, keyed by the config's absolute path (the
    tuned YAML is what ships; the study only lets a run resume)."""
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "studies" / f"{out.stem}-{key}.study.db"


def configure(parser) -> None:
    """``specplug tune layerskip``'s arguments."""
    add_config_args(parser)
    parser.add_argument("--prompts-file", required=True, help="calibration prompts (JSONL)")
    parser.add_argument("--trials", type=int, default=40,
                        help="Optuna trials, resumed ones included (default %(default)s)")
    parser.add_argument("--out", required=True, help="the tuned config file to write")
    parser.add_argument("--max-skip-ratio", type=float, default=1.0,
                        help="largest share of sub-layers a skip set may skip (default %(default)s: no limit)")
    parser.add_argument("--study", help="Optuna study database (default: under ~/.cache/specplug/studies, keyed "
                                        "by OUT); resumes")


def run_command(args) -> int:
    """``specplug tune layerskip`` (registered by the layerskip plugin)."""
    from specplug.config import load_config
    from specplug.prompts import read_prompts_file

    check_sizes(args)
    result = tune_layerskip(load_config(args.config, args.overrides), read_prompts_file(args.prompts_file),
                            args.trials, Path(args.out), max_skip_ratio=args.max_skip_ratio,
                            max_new_tokens=args.max_new_tokens or 48,
                            study_path=Path(args.study) if args.study else None)
    print(f"tuned layerskip: skip attention {result['skip_attention']}, skip MLP {result['skip_mlp']} "
          f"({result['skipped_fraction']:.0%} of sub-layers): {result['tokens_per_second']} tok/s vs plain "
          f"{result['plain_tokens_per_second']} tok/s, acceptance {result['acceptance_rate']}; wrote {result['out']}")
    return 0
