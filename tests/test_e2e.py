"""End to end: the README's quickstart `bash tasks.sh run` executes 01 -> 05 on the offline default, and ORPO must
measurably work.

Thresholds (issue 11): on the test split, whose task instances occur in no training, validation or pretraining
prompt, tuned greedy task success >= 95% and >= 40 points above the base model, tuned reward accuracy >= 0.95 and a
larger mean margin. Measured with the offline default v10 (benchmarks/results/offline_default_seeds.json, 2-core
CPU): seeds 0 / 1 / 2 gave 14.0% -> 99.3%, 18.7% -> 97.3%, 16.7% -> 99.3%, reward accuracy >= 0.993.
"""

import json
import os
from pathlib import Path

import pytest

import runner
from readme_commands import run_readme_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("quickstart")
    result = run_readme_command("bash tasks.sh run", outputs)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return outputs / "tiny-demo"


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
    assert success["tuned"] >= 0.95 and success["tuned"] - success["base"] >= 0.40, success


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


def test_finished_run_is_not_overwritten(finished_run, capsys, monkeypatch):
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(finished_run.parent))
    before = (finished_run / "eval.json").read_text()
    assert runner.main(["--run-name", "tiny-demo"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (finished_run / "eval.json").read_text() == before


def test_no_secret_leaks_into_the_run_directory(finished_run):
    token = os.environ.get("HF_TOKEN")
    assert token, "conftest plants a fake HF_TOKEN for this check"
    for path in finished_run.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".ipynb", ".txt"):
            assert token not in path.read_text(errors="ignore"), path


def test_a_notebook_run_directly_on_a_finished_run_changes_nothing(finished_run, tmp_path):
    """The old README line (papermill 04 with another beta on a finished run) retrained 0 steps and rewrote the
    record; now it stops with one message and leaves every file as it was."""
    import subprocess
    import sys

    watched = ["params.json", "metrics.jsonl", "train_summary.json", "adapter/adapter_model.safetensors"]
    before = {name: (finished_run / name).read_bytes() for name in watched}
    result = subprocess.run([sys.executable, "-m", "papermill", "notebooks/04_orpo_training.ipynb",
                             str(tmp_path / "out.ipynb"), "-k", "python3", "-p", "run_name", "tiny-demo",
                             "-p", "beta", "0.2"], cwd=Path(__file__).resolve().parent.parent,
                            capture_output=True, text=True, env={**os.environ,
                                                                  "ORPO_OUTPUTS_DIR": str(finished_run.parent)})
    assert result.returncode != 0
    assert "RunRecordError" in result.stderr and "is finished" in result.stderr
    assert {name: (finished_run / name).read_bytes() for name in watched} == before


def test_train_validation_and_test_share_no_task_instance(finished_run):
    from datasets import load_from_disk

    from helpers.data import split_key

    data = load_from_disk(str(finished_run / "data"))
    keys = {name: {split_key(p) for p in data[name]["prompt"]} for name in ("train", "validation", "test")}
    assert keys["train"] and keys["validation"] and keys["test"]
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    report = json.loads((finished_run / "data_report.json").read_text())
    assert set(report["how_formed"]) == {"train", "validation", "test"}


def test_notebook_04_checks_its_from_scratch_loss_against_trl_on_the_run(finished_run):
    import re

    text = (finished_run / "notebooks" / "04_orpo_training.ipynb").read_text()
    trl, ours, diff = re.search(r"TRL's loss ([\d.]+)\s+from scratch ([\d.]+)\s+\(relative difference ([\d.e+-]+)\)",
                                text).groups()
    assert float(diff) < 1e-5 and abs(float(trl) - float(ours)) < 1e-5
