"""Does ORPO + QLoRA work on the offline default for every seed, not just the one CI uses? (CPU, ~5 min/seed)

    .venv/bin/python benchmarks/offline_default_seeds.py 0 1 2

For each seed: builds the offline default (data, tokenizer, tiny model) if it is not cached, runs the whole
series 01 -> 05 with the runner, and reads eval.json. Prints a table and writes
benchmarks/results/offline_default_seeds.json. Targets (issue 3): tuned greedy task success >= 95% and
>= 40 points above base, tuned reward accuracy >= 0.95, build <= 3 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(seeds: list[int]) -> int:
    sys.path.insert(0, str(ROOT))
    from helpers import runner
    from helpers.offline_default import ensure_offline_default

    rows = []
    with tempfile.TemporaryDirectory(prefix="orpo-seeds-") as outputs:
        os.environ["ORPO_OUTPUTS_DIR"] = outputs
        for seed in seeds:
            started = time.perf_counter()
            info = ensure_offline_default(seed=seed).build_info
            built = time.perf_counter() - started
            started = time.perf_counter()
            if runner.main(["--run-name", f"seed{seed}", "-p", "seed", str(seed)]) != 0:
                return 1
            series = time.perf_counter() - started
            result = json.loads((Path(outputs) / f"seed{seed}" / "eval.json").read_text())
            rows.append({"seed": seed, "build_seconds_this_call": round(built, 1),
                         "pretrain_seconds": info.get("pretrain_seconds"), "series_seconds": round(series, 1),
                         "base_success": result["task_success"]["base"],
                         "tuned_success": result["task_success"]["tuned"],
                         "base_reward_accuracy": result["base"]["reward_accuracy"],
                         "tuned_reward_accuracy": result["tuned"]["reward_accuracy"]})
    print(f"\n{'seed':>4} {'base succ':>10} {'tuned succ':>11} {'base acc':>9} {'tuned acc':>10} {'series s':>9}")
    for r in rows:
        print(f"{r['seed']:>4} {r['base_success']:>10.1%} {r['tuned_success']:>11.1%} "
              f"{r['base_reward_accuracy']:>9.3f} {r['tuned_reward_accuracy']:>10.3f} {r['series_seconds']:>9.0f}")
    ok = all(r["tuned_success"] >= 0.95 and r["tuned_success"] - r["base_success"] >= 0.40
             and r["tuned_reward_accuracy"] >= 0.95 for r in rows)
    print("targets met for every seed" if ok else "TARGETS NOT MET for at least one seed")
    out = ROOT / "benchmarks" / "results" / "offline_default_seeds.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
                               "cores": os.cpu_count(), "rows": rows, "targets_met": ok}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main([int(s) for s in sys.argv[1:]] or [0, 1, 2]))
