"""End to end: the runner executes 01 -> 05 on the offline default, and ORPO must measurably work.

Thresholds are the offline default's promise (issue 3): held-out greedy task success >= 95% and >= 40 points
above the base model, held-out reward accuracy >= 0.95.
"""

import json
import os

import pytest

from helpers import runner
from helpers.rundir import outputs_root

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run():
    assert runner.main(["--run-name", "e2e"]) == 0
    return outputs_root() / "e2e"


def test_run_directory_holds_every_stage_output(finished_run):
    expected = ["params.json", "environment.json", "data/dataset_dict.json", "data_report.json",
                "tokenizer/tokenizer.json", "quantization_config.json", "model_report.json",
                "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "metrics.jsonl",
                "train_summary.json", "eval.json", "report.md", "figures/lengths.png",
                "figures/training_curves.png", "figures/margins.png"]
    expected += [f"notebooks/{name}.ipynb" for name in runner.NOTEBOOKS]
    missing = [p for p in expected if not (finished_run / p).exists()]
    assert not missing


def test_tuned_model_beats_base_by_the_promised_margins(finished_run):
    result = json.loads((finished_run / "eval.json").read_text())
    base, tuned, success = result["base"], result["tuned"], result["task_success"]
    assert result["n_pairs"] >= 100 and result["n_task_prompts"] == result["n_pairs"]
    assert tuned["reward_accuracy"] >= 0.95, tuned
    assert tuned["reward_accuracy"] > base["reward_accuracy"]
    assert tuned["mean_margin"] > base["mean_margin"]
    assert success["tuned"] >= 0.95, success
    assert success["tuned"] - success["base"] >= 0.40, success


def test_training_log_is_complete_and_finite(finished_run):
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    params = json.loads((finished_run / "params.json").read_text())
    train = [r for r in records if "loss" in r]
    assert train[-1]["step"] == params["max_steps"]
    assert any("eval_rewards/accuracies" in r for r in records)
    for r in records:
        for key, value in r.items():
            assert value == value, f"NaN in {key} at step {r.get('step')}"
    assert train[-1]["loss"] < train[0]["loss"]


def test_finished_run_is_not_overwritten(finished_run, capsys):
    before = (finished_run / "eval.json").read_text()
    assert runner.main(["--run-name", "e2e"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (finished_run / "eval.json").read_text() == before


def test_no_secret_leaks_into_the_run_directory(finished_run):
    token = os.environ.get("HF_TOKEN")
    assert token, "conftest plants a fake HF_TOKEN for this check"
    for path in finished_run.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".ipynb", ".txt"):
            assert token not in path.read_text(errors="ignore"), path
