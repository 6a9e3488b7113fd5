"""Runs started, killed the way a preemption does, and read back (tests/test_resume.py, test_gpu_paths_on_cpu.py,
test_distributed.py)."""

import json
import os
import subprocess
import time
from pathlib import Path

import psutil


def train_losses(run: Path) -> dict[int, float]:
    """{step: logged train loss} from a run's metrics.jsonl (notebook 04's log history)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def start_until(command: list[str], marker: Path, timeout: float = 900) -> subprocess.Popen:
    """Start `command` (the runner) in its own session and return it once `marker` (a checkpoint's trainer_state.json)
    exists; fail with the runner's output if it ended first."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=os.environ.copy())
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.stdout.read()[-3000:] if proc.poll() is not None else f"no {marker.parent.name} appeared"
    return proc


def kill_like_a_preemption(proc) -> None:
    """SIGKILL the runner AND every process it started, with no clean shutdown.

    Jupyter starts each kernel in a session of its own, so killing only the runner's process group would leave the
    kernel alive, finishing its cell (training) and writing into the run directory while the rerun resumes: that is
    not what a preempted machine does, and it made the resume tests depend on timing.
    """
    parent = psutil.Process(proc.pid)
    victims = parent.children(recursive=True) + [parent]
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    proc.wait()
