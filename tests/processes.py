"""Killing a run the way a preemption does (tests/test_resume.py, tests/test_gpu_paths_on_cpu.py)."""

import psutil


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
