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


def start_in_a_terminal_until(command: list[str], marker: Path, timeout: float = 900) -> subprocess.Popen:
    """`start_until`, but started as a terminal starts a foreground command: SIGINT at its default (a process started
    from a script's `&` job, or from a parent that ignores SIGINT, would ignore it: PITFALLS 42) and in a process group
    of its own, to which the test sends SIGINT as a terminal's Ctrl-C does (`os.killpg`)."""
    import signal

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=os.environ.copy(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    ended = proc.poll() is not None
    assert marker.exists(), proc.stdout.read()[-3000:] if ended else f"no {marker.parent.name} appeared"
    return proc


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of `processes` that still run (a zombie waiting for its parent to read its status does not)."""
    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive
