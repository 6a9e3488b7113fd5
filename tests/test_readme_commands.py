"""Every README command that can run on a CPU is executed here, literally, so the README cannot drift from the code.

Commands for GPU profiles are executed too: on a CPU they must stop at once with the one clear message. The
quickstart `bash tasks.sh run` is executed by tests/test_e2e.py (its run is checked there); `bash tasks.sh test` is
this test suite itself (CI runs it through .ci/run).
"""

import json

import pytest

from readme_commands import ROOT, readme_commands, run_readme_command

pytestmark = pytest.mark.slow

ELSEWHERE = {"bash tasks.sh run": "tests/test_e2e.py", "bash tasks.sh test": ".ci/run"}
GPU_ONLY = [c for c in readme_commands() if "--profile t4" in c or "--profile a100" in c or "--profile h100" in c]


def test_every_readme_command_is_covered():
    covered = set(ELSEWHERE) | set(GPU_ONLY) | set(CPU_COMMANDS)
    assert set(readme_commands()) <= covered, set(readme_commands()) - covered


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("readme-runs")


@pytest.mark.parametrize("command", GPU_ONLY)
def test_gpu_commands_stop_at_once_on_a_cpu(command, outputs):
    result = run_readme_command(command, outputs, timeout=300)
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr, result.stderr[-2000:]


def check_lr_test(outputs, result):
    params = json.loads((outputs / "lr-test" / "params.json").read_text())
    assert (params["learning_rate"], params["max_steps"]) == (1e-3, 100)
    assert (outputs / "lr-test" / "eval.json").exists()


def check_from_file(outputs, result):
    params = json.loads((outputs / "from-file" / "params.json").read_text())
    assert (params["learning_rate"], params["max_steps"]) == (1e-3, 20)


def check_help(outputs, result):
    assert "learning_rate" in result.stdout and "beta" in result.stdout


def check_sweep(outputs, result):
    summary = json.loads((outputs / "tiny-sweep" / "comparison.json").read_text())
    assert summary["runs"] == ["tiny-beta0.05", "tiny-beta0.1", "tiny-beta0.25"]
    assert summary["differing_parameters"] == ["beta"]
    assert (outputs / "tiny-sweep" / "curves.png").exists() and (outputs / "tiny-sweep" / "06_compare_runs.ipynb").exists()


def check_chat(outputs, result):
    # CHAT_INPUT's task prompt is one the offline default learned: the tuned model answers it (3 numbers)
    assert "model> 3\n" in result.stdout, result.stdout[-1000:]


def check_tensorboard(outputs, result):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((outputs / "tensorboard" / "tb" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    log = EventAccumulator(str(events[0])).Reload()
    assert len(log.Scalars("train/loss")) >= 2


def check_auto(outputs, result):
    assert "profile='auto' chose 'tiny'" in result.stdout
    assert (outputs / "tiny-demo" / "eval.json").exists()


CPU_COMMANDS = {  # command -> check of what it produced; in the order they must run
    "bash tasks.sh run --run-name lr-test -p learning_rate 1e-3 -p max_steps 100": check_lr_test,
    "bash tasks.sh run --run-name from-file -f my_params.yaml": check_from_file,
    ".venv/bin/papermill --help-notebook notebooks/04_orpo_training.ipynb": check_help,
    "bash tasks.sh run --profile auto": check_auto,  # before the chat: it makes outputs/tiny-demo
    "bash tasks.sh run --sweep beta=0.05,0.1,0.25 -p max_steps 200": check_sweep,
    ".venv/bin/python -m runner.chat tiny-demo": check_chat,
    "bash tasks.sh run --run-name tb -p report_to tensorboard -p max_steps 200": check_tensorboard,
}
CHAT_INPUT = "How many numbers does this list have: 8 7 6?\n"


@pytest.mark.parametrize("command", list(CPU_COMMANDS))
def test_cpu_command_runs_and_does_what_the_readme_says(command, outputs):
    my_params = ROOT / "my_params.yaml"  # the README's example file, as a learner would write it
    created = not my_params.exists()
    if created:
        my_params.write_text("learning_rate: 1e-3\nmax_steps: 20\n")
    try:
        result = run_readme_command(command, outputs, stdin=CHAT_INPUT if "runner.chat" in command else "")
    finally:
        if created:
            my_params.unlink()
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    CPU_COMMANDS[command](outputs, result)
