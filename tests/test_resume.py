"""Killing the series mid-training and rerunning the same command resumes from the last complete checkpoint."""

import json
import os
import subprocess
import sys
import time

import pytest
from processes import kill_like_a_preemption

from helpers.rundir import outputs_root

pytestmark = pytest.mark.slow
ARGS = ["--run-name", "resume", "-p", "max_steps", "60", "-p", "save_steps", "20", "-p", "eval_steps", "20",
        "-p", "logging_steps", "10"]


def start_runner():
    return subprocess.Popen([sys.executable, "-m", "runner", *ARGS], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=os.environ.copy())


def test_kill_mid_training_then_rerun_resumes_and_completes():
    run = outputs_root() / "resume"
    first_checkpoint = run / "checkpoints" / "checkpoint-20" / "trainer_state.json"
    proc = start_runner()
    deadline = time.time() + 900
    while not first_checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first_checkpoint.exists(), "no checkpoint appeared"
    time.sleep(0.5)
    kill_like_a_preemption(proc)  # the runner and its kernel, like a preempted GPU
    assert not (run / "eval.json").exists()
    # A checkpoint the kill left half-written: must be skipped, not crash the resume.
    broken = run / "checkpoints" / "checkpoint-50"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "trainer_state.json").write_text('{"global_step": 5')

    rerun = start_runner()
    output, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, output[-3000:]
    assert "Skipping incomplete checkpoint checkpoint-50" in output
    assert "Resuming from checkpoint-" in output

    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = sorted({r["step"] for r in history if "loss" in r})
    assert logged == [1, 10, 20, 30, 40, 50, 60], "the log must be as complete as an uninterrupted run's"
    assert sorted({r["step"] for r in history if "eval_loss" in r}) == [20, 40, 60]
    assert (run / "adapter" / "adapter_model.safetensors").exists() and (run / "eval.json").exists()
