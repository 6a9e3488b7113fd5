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


def check_prepared(outputs, result):
    run = outputs / "beta-test"
    assert (run / "data_report.json").exists() and (run / "model_report.json").exists()
    assert not (run / "adapter").exists()


def check_beta(outputs, result):
    run = outputs / "beta-test"
    params = json.loads((run / "params.json").read_text())
    summary = json.loads((run / "train_summary.json").read_text())
    assert (params["beta"], params["max_steps"], summary["global_step"]) == (0.2, 200, 200)
    assert (run / "notebooks" / "04_orpo_training.ipynb").exists()


def check_auto(outputs, result):
    assert "profile='auto' chose 'tiny'" in result.stdout
    assert (outputs / "tiny-demo" / "eval.json").exists()


CPU_COMMANDS = {  # command -> check of what it produced; in README order (beta-test needs its preparation first)
    "bash tasks.sh run --run-name lr-test -p learning_rate 1e-3 -p max_steps 100": check_lr_test,
    "bash tasks.sh run --run-name from-file -f my_params.yaml": check_from_file,
    ".venv/bin/papermill --help-notebook notebooks/04_orpo_training.ipynb": check_help,
    "bash tasks.sh run --run-name beta-test --only 01,02,03": check_prepared,
    ".venv/bin/papermill notebooks/04_orpo_training.ipynb outputs/beta-test/notebooks/04_orpo_training.ipynb -k "
    "python3 -p run_name beta-test -p beta 0.2 -p max_steps 200": check_beta,
    "bash tasks.sh run --profile auto": check_auto,
}


@pytest.mark.parametrize("command", list(CPU_COMMANDS))
def test_cpu_command_runs_and_does_what_the_readme_says(command, outputs):
    my_params = ROOT / "my_params.yaml"  # the README's example file, as a learner would write it
    created = not my_params.exists()
    if created:
        my_params.write_text("learning_rate: 1e-3\nmax_steps: 20\n")
    try:
        result = run_readme_command(command, outputs)
    finally:
        if created:
            my_params.unlink()
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    CPU_COMMANDS[command](outputs, result)
