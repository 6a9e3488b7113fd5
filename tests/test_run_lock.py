"""One writer per run: `open_run` takes the run's lock (helpers.rundir.hold_run) and a second writer (a runner, a
JupyterLab kernel) gets one clear error naming the holder, while the processes the holder started (the runner's
kernels, notebook 04's launched ranks) pass; a stage's lock goes when the stage has written its last file, or when its
process dies. And a Ctrl-C of the runner prints one line, exits 130, leaves no process behind and resumes.

A JupyterLab kernel is stood in for by an IPython shell in a process of its own (`Kernel`): it runs the cells it is
sent, with IPython's post-cell events, and stays open between them as learners leave kernels open.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from processes import start_in_a_terminal_until, still_running, train_losses

import runner
from helpers.rundir import LOCK_ENV, RunDir, RunInUseError, open_run, outputs_root, release_run

ROOT = Path(__file__).resolve().parent.parent
HOST = os.uname().nodename
KERNEL = """
import sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
for cell in sys.stdin:
    result = shell.run_cell(cell)
    error = result.error_before_exec or result.error_in_exec
    print(f"<<{type(error).__name__ if error else 'ok'}>>", flush=True)
"""


def independent_env() -> dict:
    """The environment of a process no lock holder started (a JupyterLab kernel, a second terminal)."""
    return {k: v for k, v in os.environ.items() if k != LOCK_ENV}


class Kernel:
    """A notebook's kernel as JupyterLab starts one: `run(cell)` returns 'ok' or the error's class name."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", KERNEL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=independent_env())
        self.output = ""
        assert self.run("from helpers.rundir import open_run, write_json") == "ok", self.output

    def run(self, cell: str) -> str:
        self.proc.stdin.write(cell + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("<<"):
                return line.strip()[2:-2]
            self.output += line
        return f"kernel ended: {self.output[-2000:]}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(tmp_path))
    monkeypatch.delenv(LOCK_ENV, raising=False)  # restored afterwards: taking a lock sets it in this process
    import papermill
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a notebook started"))
    return tmp_path


@pytest.fixture
def kernel():
    started = Kernel()
    yield started
    started.stop()


def python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=env or os.environ.copy())


def test_a_second_writer_is_refused_with_the_holders_details_before_anything_changes(outputs, kernel, capsys):
    assert kernel.run("cfg, run = open_run('r', 'tiny', start=True, has_gpu=False)") == "ok", kernel.output
    params = (outputs / "r" / "params.json").read_text()
    holder = rf"pid {kernel.proc.pid} on {re.escape(HOST)} \(notebook 01, since {time.strftime('%Y-%m-%d')} "
    # As a JupyterLab kernel opens it (notebook 02), and with the runner's --overwrite (which archives a run):
    with pytest.raises(RunInUseError, match=rf"Run 'r' is in use by {holder}.*restart that notebook's kernel"):
        open_run("r", stage="02")
    with pytest.raises(RunInUseError, match=holder):
        open_run("r", "tiny", {"max_steps": 3}, start=True, overwrite=True, has_gpu=False)
    # As a second `python -m runner` does: one error, exit status 2, before any notebook starts.
    handler = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a script's `&` job
    assert runner.main(["--run-name", "r"]) == 2
    assert signal.getsignal(signal.SIGINT) is handler, "the runner restores Ctrl-C's handler"
    err = capsys.readouterr().err
    assert re.fullmatch(rf"ERROR: Run 'r' is in use by {holder}.*another run_name\.\n", err), err
    assert (outputs / "r" / "params.json").read_text() == params
    assert [p.name for p in outputs.iterdir() if p.is_dir()] == ["r"], "nothing archived"


def test_a_lock_left_by_a_dead_process_is_taken_over_with_one_line(outputs, capsys):
    died = python("import os\nfrom helpers.rundir import open_run\nopen_run('r', 'tiny', start=True, has_gpu=False)\n"
                  "print(os.getpid(), flush=True)\nos.kill(os.getpid(), 9)", env=independent_env())
    assert died.returncode == -signal.SIGKILL, died.stderr
    open_run("r", stage="02")
    said = [line for line in capsys.readouterr().out.splitlines() if "lock" in line]
    assert len(said) == 1 and re.fullmatch(rf"Run 'r': taking over the lock of pid {died.stdout.strip()} on "
                                           rf"{re.escape(HOST)} \(notebook 01, since .*\), which ended without "
                                           r"releasing it\.", said[0]), said
    refused = python("from helpers.rundir import open_run\nopen_run('r', stage='03')", env=independent_env())
    assert f"in use by pid {os.getpid()} on {HOST} (notebook 02" in refused.stderr
    release_run(RunDir(outputs / "r"))
    opened = python("from helpers.rundir import open_run\nopen_run('r', stage='03')", env=independent_env())
    assert opened.returncode == 0 and "taking over" not in opened.stdout, "a released lock is not a stale one"


def test_processes_the_holder_started_pass_and_launched_ranks_inherit_the_token(outputs, monkeypatch):
    open_run("r", "tiny", start=True, has_gpu=False)  # this process holds the run, as the runner does
    child = python("from helpers.rundir import open_run\nopen_run('r', stage='02')\nprint('opened')")
    assert child.returncode == 0 and "opened" in child.stdout, child.stderr  # a papermill kernel of the runner
    stranger = python("from helpers.rundir import open_run\nopen_run('r', stage='02')", env=independent_env())
    assert stranger.returncode != 0 and f"in use by pid {os.getpid()}" in stranger.stderr

    from engine import multi_gpu

    seen = {}

    class Launched:  # accelerate launch, ending at once
        stdout = []

        def __init__(self, cmd, env, **kwargs):
            seen.update(env)

        def wait(self):
            return 0

    monkeypatch.setattr(multi_gpu.subprocess, "Popen", Launched)
    multi_gpu.launch_training({"run_name": "r"}, 2, echo=lambda line: None)
    assert seen[LOCK_ENV] == os.environ[LOCK_ENV], "notebook 04's launched ranks must carry the lock's token"
    release_run(RunDir(outputs / "r"))


def test_a_kernel_left_open_releases_its_stage_once_the_stage_wrote_its_last_file(outputs, kernel):
    assert kernel.run("cfg, run = open_run('r', 'tiny', start=True, has_gpu=False)") == "ok", kernel.output
    assert kernel.run("write_json(run.environment, {})") == "ok"  # notebook 01's last file: 01 is done
    open_run("r", stage="02")  # another kernel: 01's is open, but done
    release_run(RunDir(outputs / "r"))
    assert kernel.run("cfg, run = open_run('r', stage='04')") == "ok", kernel.output  # the kernel runs 04 now
    with pytest.raises(RunInUseError, match=rf"pid {kernel.proc.pid} .*\(notebook 04, since"):
        open_run("r", stage="05")
    assert kernel.run("write_json(run.train_summary, {})") == "ok"  # notebook 04's last file
    open_run("r", stage="05")
    release_run(RunDir(outputs / "r"))


def test_a_kernel_releases_its_stage_after_the_cell_in_which_its_launched_processes_finished_it(outputs, kernel):
    assert kernel.run("cfg, run = open_run('r', 'tiny', start=True, has_gpu=False)") == "ok", kernel.output
    assert kernel.run("write_json(run.environment, {})") == "ok"
    assert kernel.run("cfg, run = open_run('r', stage='04')") == "ok"
    rank = ("from helpers.rundir import open_run, write_json\n_, run = open_run('r', stage='04')\n"
            "write_json(run.train_summary, {})")  # notebook 04's cells in a launched process (num_processes > 1)
    cell = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {rank!r}], check=True)"
    assert kernel.run(cell) == "ok", kernel.output
    open_run("r", stage="05")
    release_run(RunDir(outputs / "r"))


def test_a_dead_kernel_frees_the_run(outputs, kernel, capsys):
    assert kernel.run("cfg, run = open_run('r', 'tiny', start=True, has_gpu=False)") == "ok", kernel.output
    assert kernel.run("cfg, run = open_run('r', stage='04')") == "ok"
    kernel.stop()  # the learner restarts the kernel
    open_run("r", stage="04")
    assert f"taking over the lock of pid {kernel.proc.pid}" in capsys.readouterr().out
    release_run(RunDir(outputs / "r"))


# ---- Ctrl-C of the runner ---------------------------------------------------------------------------------------

RESUME_ARGS = ["-p", "max_steps", "60", "-p", "save_steps", "20", "-p", "eval_steps", "20", "-p", "logging_steps",
               "10"]  # tests/test_resume.py's


@pytest.mark.slow
def test_ctrl_c_says_where_it_stopped_in_one_line_exits_130_leaves_nothing_and_the_same_command_resumes():
    run = outputs_root() / "ctrl-c"
    command = [sys.executable, "-m", "runner", "--run-name", "ctrl-c", *RESUME_ARGS]
    proc = start_in_a_terminal_until(command, run / "checkpoints" / "checkpoint-20" / "trainer_state.json")
    started = psutil.Process(proc.pid).children(recursive=True)
    assert any("ipykernel" in " ".join(p.cmdline()) for p in started), "no kernel found"
    # While it trains, a second terminal and a JupyterLab kernel are refused, naming the runner.
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=independent_env())
    holder = f"in use by pid {proc.pid} on {HOST} (notebook 04 of `python -m runner`, since "
    assert second.returncode == 2 and holder in second.stderr, second.stdout[-2000:] + second.stderr[-2000:]
    with pytest.raises(RunInUseError, match=re.escape(holder)):
        open_run("ctrl-c", stage="04")

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the runner's terminal
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    said = [line for line in output.splitlines() if line.startswith("Interrupted")]
    assert len(said) == 1, output[-3000:]
    stopped = re.fullmatch(r"Interrupted in 04_orpo_training at step (\d+); the same command resumes from "
                           r"checkpoint-(\d+)\.", said[0])
    assert stopped and int(stopped[2]) <= int(stopped[1]) < 60, said
    assert (run / "checkpoints" / f"checkpoint-{stopped[2]}" / "adapter_model.safetensors").exists()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert not still_running(started), "the kernel (or a process it started) outlived the runner"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900, env=independent_env())
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    assert f"Resuming from checkpoint-{stopped[2]}" in rerun.stdout
    assert "taking over" not in rerun.stdout, "the interrupted runner released its lock"
    assert max(train_losses(run)) == 60 and (run / "eval.json").exists()
