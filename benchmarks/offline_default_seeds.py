"""Does ORPO + QLoRA work on the offline default for every seed, not just the one CI uses? (CPU, ~5-8 min/seed)

    .venv/bin/python benchmarks/offline_default_seeds.py 0 1 2
    .venv/bin/python benchmarks/offline_default_seeds.py --fresh-cache 0     # time the build too
    .venv/bin/python benchmarks/offline_default_seeds.py -p max_steps 400 --out /tmp/try.json 0 1 2   # other values

For each seed: builds the offline default (data, tokenizer, tiny model) if it is not cached, runs the whole
series 01 -> 05 with the runner (outputs in a temporary folder), and reads data_report.json and eval.json. Prints
per-family held-out task success (base -> tuned) and a summary table, and writes
benchmarks/results/offline_default_seeds.json. Targets (issues 3 and 11): tuned greedy task success >= 95% and >= 40
points above base, tuned reward accuracy >= 0.95 on the test split, whose task instances (`tasks.instance_key`)
occur in no training, validation or pretraining prompt: each row counts the shared instances (must be 0).
Per family it reports greedy task success (notebook 05's eval.json) and reward accuracy (rescored here the way
notebook 05 scores, since eval.json keeps only the overall number).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"tuned_success": 0.95, "gain_points": 0.40, "tuned_reward_accuracy": 0.95}


def meets_targets(row: dict) -> bool:
    return (row["tuned_success"] >= TARGETS["tuned_success"]
            and row["tuned_success"] - row["base_success"] >= TARGETS["gain_points"]
            and row["tuned_reward_accuracy"] >= TARGETS["tuned_reward_accuracy"])


def reward_accuracy_per_family(run: Path, seed: int) -> dict:
    """Base and tuned reward accuracy per task family on the run's test split, scored as notebook 05 scores it
    (the same 4-bit base model, the adapter on and off), which writes only the overall numbers to eval.json."""
    import torch
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from offline_default import OFFLINE_MODEL_ID, resolve
    from helpers.scoring import mean_answer_logps
    from offline_default.tasks import task_of

    test = load_from_disk(str(run / "data"))["test"]
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    bnb = BitsAndBytesConfig.from_dict(json.loads((run / "quantization_config.json").read_text()))
    base = AutoModelForCausalLM.from_pretrained(resolve(OFFLINE_MODEL_ID, seed=seed), quantization_config=bnb,
                                                dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    families = [task_of(p[-1]["content"]) for p in test["prompt"]]
    out: dict[str, dict] = {}
    for name, adapter in (("base", model.disable_adapter()), ("tuned", nullcontext())):
        with adapter:
            c = mean_answer_logps(model, tokenizer, test["prompt"], test["chosen"])
            r = mean_answer_logps(model, tokenizer, test["prompt"], test["rejected"])
        for family in sorted(set(families)):
            wins = [a > b for a, b, f in zip(c, r, families) if f == family]
            out.setdefault(family, {})[name] = sum(wins) / len(wins)
        out.setdefault("all", {})[name] = sum(a > b for a, b in zip(c, r)) / len(c)
    return out


TEST_SET = ("the offline default's test_prefs split: per family 30 distinct task instances (family + operands,"
            " `offline_default.tasks.instance_key`) drawn first from the seed, one prompt each; the training pairs and the"
            " pretraining text are then drawn only from other instances (in no wording, and for larger/smaller in no"
            " order, asks a prompt for a test instance); notebook 02 carves validation from the training pairs by"
            " instance")


def shared_instances(run: Path, seed: int) -> dict:
    """How many test instances also occur in the run's train / validation split and in the pretraining prompts."""
    from datasets import load_from_disk

    from offline_default.build import build_examples
    from offline_default.tasks import instance_key

    data = load_from_disk(str(run / "data"))
    keys = {name: {instance_key(p[-1]["content"]) for p in data[name]["prompt"]} for name in data}
    keys["pretraining"] = {ex["instance"] for ex in build_examples(seed)["pretrain"]}
    assert None not in keys["test"]
    return {name: len(keys["test"] & keys[name]) for name in ("train", "validation", "pretraining")} | {
        "validation_train": len(keys["validation"] & keys["train"]), "test_instances": len(keys["test"])}


def run_seed(seed: int, outputs: Path, parameters: list[list[str]]) -> dict | None:
    import runner
    from offline_default import ensure_offline_default

    started = time.perf_counter()
    info = ensure_offline_default(seed=seed).build_info
    built = time.perf_counter() - started
    started = time.perf_counter()
    extra = [arg for name, value in parameters for arg in ("-p", name, value)]
    if runner.main(["--run-name", f"seed{seed}", "-p", "seed", str(seed), *extra]) != 0:
        return None
    series = time.perf_counter() - started
    run = outputs / f"seed{seed}"
    result = json.loads((run / "eval.json").read_text())
    report = json.loads((run / "data_report.json").read_text())
    row = {"seed": seed, "build_version": info["build_version"], "build_seconds_this_call": round(built, 1),
           "pretrain_seconds": info.get("pretrain_seconds"), "series_seconds": round(series, 1),
           "splits": report["splits"], "how_formed": report.get("how_formed"),
           "test_instances_shared_with": shared_instances(run, seed),
           "base_success": result["task_success"]["base"], "tuned_success": result["task_success"]["tuned"],
           "base_reward_accuracy": result["base"]["reward_accuracy"],
           "tuned_reward_accuracy": result["tuned"]["reward_accuracy"],
           "per_family": result.get("task_success_per_family"),
           "reward_accuracy_per_family": reward_accuracy_per_family(run, seed),
           "build": {key: info.get(key) for key in ("base_greedy_success_test", "base_greedy_success_test_per_family",
                                                    "sizes", "examples_sha256", "weights_sha256", "determinism")}}
    # The same numbers as notebook 05 (rescored here per family); a mismatch means the rescoring is not like-for-like.
    for name in ("base", "tuned"):
        assert abs(row["reward_accuracy_per_family"]["all"][name] - result[name]["reward_accuracy"]) < 0.01, name
    row["targets_met"] = meets_targets(row) and not any(
        v for k, v in row["test_instances_shared_with"].items() if k != "test_instances")
    return row


def print_tables(rows: list[dict]) -> None:
    families = sorted({f for r in rows for f in (r["per_family"] or {})})
    print("\nheld-out greedy task success per family, base -> tuned (reward accuracy base -> tuned)")
    print(f"{'seed':>4}  " + "".join(f"{f:>26}" for f in families))
    for r in rows:
        acc = r["reward_accuracy_per_family"]
        cells = [f"{r['per_family'][f]['base']:.0%}->{r['per_family'][f]['tuned']:.0%} "
                 f"({acc[f]['base']:.2f}->{acc[f]['tuned']:.2f})" for f in families]
        print(f"{r['seed']:>4}  " + "".join(f"{c:>26}" for c in cells))
    print(f"\n{'seed':>4} {'train/val/test':>15} {'base succ':>10} {'tuned succ':>11} {'base acc':>9} "
          f"{'tuned acc':>10} {'pretrain s':>11} {'series s':>9}  targets")
    for r in rows:
        sizes = "/".join(str(r["splits"][k]) for k in ("train", "validation", "test"))
        print(f"{r['seed']:>4} {sizes:>15} {r['base_success']:>10.1%} {r['tuned_success']:>11.1%} "
              f"{r['base_reward_accuracy']:>9.3f} {r['tuned_reward_accuracy']:>10.3f} {r['pretrain_seconds']:>11} "
              f"{r['series_seconds']:>9.0f}  {'met' if r['targets_met'] else 'NOT met'}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--fresh-cache", action="store_true",
                        help="build into a temporary cache (ORPO_OFFLINE_CACHE), so every build is timed")
    parser.add_argument("--keep", type=Path, help="write the runs here (e.g. under /tmp) instead of a temporary folder")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a runner parameter for every seed (to try other profile values; recorded in the JSON)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "offline_default_seeds.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    rows = []
    with tempfile.TemporaryDirectory(prefix="orpo-seeds-") as outputs, \
            tempfile.TemporaryDirectory(prefix="orpo-cache-") as cache:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            outputs = str(args.keep)
        os.environ["ORPO_OUTPUTS_DIR"] = outputs
        if args.fresh_cache:
            os.environ["ORPO_OFFLINE_CACHE"] = cache
        for seed in args.seeds:
            row = run_seed(seed, Path(outputs), args.parameter)
            if row is None:
                return 1
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_tables(rows)
    ok = all(r["targets_met"] for r in rows)
    print("targets met for every seed" if ok else "TARGETS NOT MET for at least one seed")
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
                               "cores": os.cpu_count(), "parameters": dict(args.parameter), "targets": TARGETS,
                               "test_set": TEST_SET, "rows": rows,
                               "targets_met": ok},
                              indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
