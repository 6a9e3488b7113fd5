"""Multi-GPU scaling of notebook 04: tokens/s on N GPUs (DDP, `num_processes N`) against 1, in one run.

What runs is the series itself: `python -m runner --profile h100 --only 01,02,03,04` on the Mistral-7B-shaped
random-weight model and the UltraFeedback-schema data that `gpu_series_check.py --build-only` builds (reused from
--work when present), once per process count, with the same per-GPU micro-batch (16 pairs, the h100 profile's), so N
GPUs train N x the pairs per step (weak scaling, the way DDP is used to go faster). In-training evaluation and
checkpoints are pushed past the end; they would interrupt the timing. Measured: notebook 04's own
`steady_tokens_per_second` (helpers.modeling.Throughput: real tokens per second over the steps after the first 5),
peak memory and the DDP replica check. Scaling = tokens/s(N) / (N x tokens/s(1)); the issue's target is >= 0.9.

    python benchmarks/multi_gpu_scaling.py --processes 1,2 --steps 30        # on a 2-GPU box, ~6 minutes
    python benchmarks/multi_gpu_scaling.py --small --processes 1,2 --steps 6 # CPU smoke test (gloo); numbers mean nothing

Device tool: run(command="bash benchmarks/multi_gpu_scaling.sh", kind="nvidia-h100-x2", carry=[".whl"]).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "multi_gpu_scaling.json"
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
NEVER = 10**6


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_build(work: Path, small: bool) -> dict:
    info = work / "build_info.json"
    if not info.exists():
        log(f"building the model and data in {work} (gpu_series_check.py --build-only)")
        cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_series_check.py"), "--build-only", "--work",
               str(work), "--out", str(work / "build_result.json")] + (["--small"] if small else [])
        subprocess.run(cmd, cwd=REPO_ROOT, check=True)
    return json.loads(info.read_text())


def run_series(work: Path, build: dict, processes: int, steps: int, profile: str, small: bool,
               strategy: str = "ddp") -> dict:
    run_name = f"scale-{processes}-{strategy}"
    outputs = work / "scaling-outputs"
    params = {"model_id": build["model_dir"], "dataset_id": build["data_dir"], "num_processes": processes,
              "distributed": strategy,
              "max_steps": steps, "eval_steps": NEVER, "save_steps": NEVER, "logging_steps": 5,
              "n_validation": 16, "n_eval": 16}
    if small:
        params.update(max_length=128)
    cmd = [sys.executable, "-m", "runner", "--profile", profile, "--run-name", run_name, "--only",
           "01,02,03,04", "--overwrite"]
    for name, value in params.items():
        cmd += ["-p", name, str(value)]
    log(f"{processes} process(es), {strategy}: {subprocess.list2cmdline(cmd[1:])}")
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, **ENV, "ORPO_OUTPUTS_DIR": str(outputs)},
                          capture_output=True, text=True)
    record = {"processes": processes, "distributed": strategy, "returncode": proc.returncode, "wall_s": round(time.time() - started, 1),
              "parameters": params}
    run = outputs / run_name
    notebook = run / "notebooks" / "04_orpo_training.ipynb"
    text = notebook.read_text() if notebook.exists() else ""
    record["replicas_identical"] = (f"identical in all {processes} processes" in text
                                    if processes > 1 and strategy == "ddp" else None)
    summary = run / "train_summary.json"
    record["train_summary"] = json.loads(summary.read_text()) if summary.exists() else None
    if proc.returncode != 0 or record["train_summary"] is None:
        record["output_tail"] = (proc.stdout + proc.stderr)[-4000:]
    log(f"{processes} process(es): rc {proc.returncode}, {record['wall_s']} s, summary {record['train_summary']}")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-check"))
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default %(default)s)")
    parser.add_argument("--fsdp", action="store_true", help="also one FSDP-QLoRA run on the largest process count")
    parser.add_argument("--fsdp-only", action="store_true", help="only the FSDP-QLoRA run (its own device call when "
                        "DDP and FSDP together don't fit one)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default %(default)s)")
    parser.add_argument("--profile", default="h100")
    parser.add_argument("--small", action="store_true", help="tiny model on the CPU (gloo): a smoke test")
    parser.add_argument("--deadline-s", type=float, default=0, help="start no run later than this many seconds "
                        "minus --min-run-s after $GPU_CHECK_STARTED (or the start); 0 = no deadline")
    parser.add_argument("--min-run-s", type=float, default=170)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--mirror-dir", type=Path, default=None, help="also write the JSON here (device: $OUT)")
    args = parser.parse_args(argv)
    out = args.out or (args.work / "multi_gpu_scaling.json" if args.small else DEFAULT_OUT)
    counts = [int(n) for n in args.processes.split(",")]
    import torch

    result = {"benchmark": "multi_gpu_scaling", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
              "versions": {"torch": torch.__version__}, "options": {k: str(v) for k, v in vars(args).items()},
              "runs": []}
    for name in ("transformers", "trl", "peft", "bitsandbytes", "accelerate"):
        try:
            result["versions"][name] = __import__(name).__version__
        except ImportError:
            result["versions"][name] = None
    result["build"] = build = ensure_build(args.work, args.small)
    plan = [] if args.fsdp_only else [(n, "ddp") for n in counts]
    plan += [(max(counts), "fsdp")] if args.fsdp or args.fsdp_only else []
    started = float(os.environ.get("GPU_CHECK_STARTED") or time.time())
    for n, strategy in plan:
        if args.deadline_s and time.time() - started > args.deadline_s - args.min_run_s:
            result.setdefault("skipped", []).append(f"{n} x {strategy}: too little time left before --deadline-s")
            log(result["skipped"][-1])
            continue
        result["runs"].append(run_series(args.work, build, n, args.steps, "tiny" if args.small else args.profile,
                                         args.small, strategy))
        write(result, out, args.mirror_dir)
    rates = {r["processes"]: (r["train_summary"] or {}).get("steady_tokens_per_second") for r in result["runs"]
             if r["distributed"] == "ddp"}
    if rates.get(1):
        result["scaling"] = {str(n): {"tokens_per_second": rate, "speedup": round(rate / rates[1], 3),
                                      "efficiency": round(rate / (n * rates[1]), 3)}
                             for n, rate in rates.items() if rate}
    write(result, out, args.mirror_dir)
    log(f"scaling: {json.dumps(result.get('scaling'))}")
    fsdp = [r for r in result["runs"] if r["distributed"] == "fsdp"]
    if fsdp and fsdp[0]["train_summary"] and rates.get(1):
        result["fsdp_vs_1_gpu"] = round(fsdp[0]["train_summary"]["steady_tokens_per_second"] / rates[1], 3)
    ok = all(r["returncode"] == 0 and r["train_summary"] and r["replicas_identical"] is not False
             for r in result["runs"])
    return 0 if ok else 1


def write(result: dict, out: Path, mirror: Path | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    out.write_text(text)
    if mirror:
        mirror.mkdir(parents=True, exist_ok=True)
        (mirror / out.name).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
