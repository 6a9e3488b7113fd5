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


# ---- a run's record stays true however a notebook is executed -----------------------------------------------


def _finish(run, *stages):
    from helpers.rundir import STAGE_DONE

    for stage in stages:
        write_json(run.root / STAGE_DONE[stage], {})


def test_changed_parameters_after_a_stage_is_done_are_refused_and_nothing_changes(outputs):
    from helpers.rundir import RunRecordError

    _, run = open_run("rec", "tiny", {"max_steps": 20}, start=True)
    _finish(run, "02", "03", "04")
    before = run.params.read_text()
    with pytest.raises(RunRecordError, match=r"already produced outputs.*beta=0.2 \(stored: 0.1\).*new run_name"):
        open_run("rec", overrides={"beta": 0.2}, stage="04")
    with pytest.raises(RunRecordError, match="max_length"):
        open_run("rec", overrides={"max_length": 64}, stage="02")
    assert run.params.read_text() == before


def test_completed_training_is_never_retrained_by_rerunning_notebook_04(outputs):
    from helpers.rundir import RunRecordError

    _, run = open_run("rec4", "tiny", start=True)
    _finish(run, "02", "03", "04")
    with pytest.raises(RunRecordError, match="training is complete"):
        open_run("rec4", stage="04")
    open_run("rec4", stage="05")  # evaluation may run (again) on the same parameters
    _finish(run, "05")
    with pytest.raises(RunRecordError, match="is finished"):
        open_run("rec4", stage="04")
    with pytest.raises(RunRecordError, match="is finished.*max_new_tokens"):
        open_run("rec4", overrides={"max_new_tokens": 4}, stage="05")


def test_overrides_before_their_stage_ran_are_recorded(outputs):
    _, run = open_run("fresh", "tiny", start=True)
    _finish(run, "02", "03")
    cfg, _ = open_run("fresh", overrides={"beta": 0.2}, stage="04")
    assert cfg.beta == 0.2 and json.loads(run.params.read_text())["beta"] == 0.2
