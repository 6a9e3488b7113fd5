import json
import os

import pytest

from helpers.modeling import latest_valid_checkpoint
from helpers.profiles import ParameterError
from helpers.rundir import RunDir, open_run, write_json


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(tmp_path))
    return tmp_path


def test_start_writes_params_and_later_notebooks_read_and_record_overrides(outputs):
    cfg, run = open_run("r1", "tiny", {"max_steps": 7}, start=True)
    assert json.loads(run.params.read_text())["max_steps"] == 7
    cfg2, _ = open_run("r1", overrides={"learning_rate": 1e-3, "beta": None})
    assert (cfg2.max_steps, cfg2.learning_rate, cfg2.beta) == (7, 1e-3, cfg.beta)
    assert json.loads(run.params.read_text())["learning_rate"] == 1e-3


def test_later_notebook_without_notebook_01_says_what_to_run(outputs):
    with pytest.raises(FileNotFoundError, match="run notebook 01 first"):
        open_run("never-started")


def test_finished_run_is_never_overwritten_and_overwrite_archives_it(outputs):
    _, run = open_run("done", "tiny", start=True)
    write_json(run.eval_json, {"ok": True})
    (run.root / "adapter").mkdir()
    with pytest.raises(FileExistsError, match="never overwritten silently"):
        open_run("done", "tiny", start=True)
    assert run.eval_json.exists()
    open_run("done", "tiny", start=True, overwrite=True)
    archived = [p for p in outputs.iterdir() if p.name.startswith("done.replaced-")]
    assert len(archived) == 1 and (archived[0] / "eval.json").exists() and (archived[0] / "adapter").is_dir()
    assert not run.eval_json.exists()


def test_reopening_unfinished_run_with_other_parameters_is_refused(outputs):
    open_run("r2", "tiny", {"max_steps": 5}, start=True)
    open_run("r2", "tiny", {"max_steps": 5}, start=True)  # same parameters: resume is fine
    with pytest.raises(FileExistsError, match="other parameters"):
        open_run("r2", "tiny", {"max_steps": 6}, start=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_outputs_folder_is_a_parameter_error(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(locked / "sub"))
    with pytest.raises(ParameterError, match="Cannot write"):
        open_run("x", "tiny", start=True)


def test_output_folder_that_is_a_file_is_a_parameter_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(blocker))
    with pytest.raises(ParameterError, match="Cannot write to the output folder"):
        open_run("x", "tiny", start=True)


def test_latest_valid_checkpoint_skips_incomplete_ones(tmp_path, capsys):
    def make(step, complete=True, state="{}"):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(state)
        if complete:
            (folder / "adapter_model.safetensors").write_bytes(b"x")
    assert latest_valid_checkpoint(tmp_path / "missing") is None
    make(50)
    make(100)
    make(150, complete=False)
    make(200, state="{truncated")
    assert latest_valid_checkpoint(tmp_path).endswith("checkpoint-100")
    out = capsys.readouterr().out
    assert "checkpoint-150" in out and "checkpoint-200" in out


def test_rundir_require_names_the_notebook(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="run notebook 04 first"):
        run.require(run.adapter, "notebook 04")
