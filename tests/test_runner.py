"""The runner's validation happens before any notebook starts: errors exit 2 with one clear message."""

import pytest

import runner
from helpers.rundir import write_json


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(tmp_path))
    import papermill
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a notebook started"))
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["-p", "learning_rate", "-1"], "`learning_rate` must be > 0"),
    (["-p", "learnin_rate", "1e-3"], "Unknown parameter(s) ['learnin_rate']"),
    (["--profile", "v100"], "Unknown profile 'v100'"),
    (["--profile", "h100"], "needs a CUDA GPU"),
    (["-p", "max_length", "4"], "too small"),
    (["-p", "run_name", "x"], "Pass `run_name` with --run-name"),
    (["-p", "num_processes", "2", "-p", "distributed", "fsdp"], "'fsdp' with num_processes > 1 needs GPUs"),
    (["-p", "share_prompt", "true"], "`share_prompt` needs the fast trainer"),
    (["-p", "optim", "adam"], "`optim` must be one of ['auto', 'paged_adamw_8bit'"),
])
def test_bad_parameters_exit_2_with_one_clear_message(outputs, capsys, argv, message):
    assert runner.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("ERROR: ")
    assert not any(outputs.iterdir()), "nothing may be written for a rejected run"


def test_yaml_file_is_read_and_command_line_wins(tmp_path, outputs):
    params = tmp_path / "p.yaml"
    params.write_text("learning_rate: 1.0e-3\nmax_steps: 3\n")
    args = runner.parse_args(["-f", str(params), "-p", "max_steps", "4"])
    assert runner.collect_overrides(args) == {"learning_rate": 1e-3, "max_steps": 4}


def test_unreadable_yaml_is_a_clear_error(tmp_path, outputs, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    assert runner.main(["-f", str(bad)]) == 2
    assert "must hold a YAML mapping" in capsys.readouterr().err


def test_finished_run_is_refused_without_overwrite(outputs, capsys):
    write_json(outputs / "done" / "eval.json", {})
    assert runner.main(["--run-name", "done"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (outputs / "done" / "eval.json").exists()


@pytest.mark.parametrize("argv, name, value", [
    (["-p", "learning_rate", "1e-3"], "learning_rate", 1e-3),  # the README's own example
    (["-p", "learning_rate", "2e-4"], "learning_rate", 2e-4),
    (["-p", "fast_orpo_trainer", "true"], "fast_orpo_trainer", True),
    (["-p", "fast_orpo_trainer", "True"], "fast_orpo_trainer", True),
    (["-p", "max_steps", "100"], "max_steps", 100),
    (["-p", "checkpoint_layers", "-1"], "checkpoint_layers", -1),  # the OOM advice's own values
    (["-p", "checkpoint_layers", "26"], "checkpoint_layers", 26),
    (["-p", "adaptive_checkpointing", "false"], "adaptive_checkpointing", False),
])
def test_parameters_read_like_papermills_p(outputs, argv, name, value):
    from helpers.profiles import resolve_config

    args = runner.parse_args(argv)
    assert resolve_config("tiny", runner.collect_overrides(args)).__getattribute__(name) == value


def test_yaml_file_accepts_exponents_without_a_dot(tmp_path, outputs):
    from helpers.profiles import resolve_config

    params = tmp_path / "p.yaml"
    params.write_text("learning_rate: 1e-3\nbeta: 2e-1\nfast_orpo_trainer: true\n")
    cfg = resolve_config("tiny", runner.collect_overrides(runner.parse_args(["-f", str(params)])))
    assert (cfg.learning_rate, cfg.beta, cfg.fast_orpo_trainer) == (1e-3, 0.2, True)


def test_ctrl_c_says_in_one_line_where_the_run_stopped_and_what_the_same_command_does(outputs, capsys):
    import nbformat

    from helpers.rundir import RunDir

    run = RunDir(outputs / "r")
    assert runner.interruption(run, "02_data_preparation") == ("Interrupted in 02_data_preparation; the same command "
                                                               "runs it again (the finished notebooks are skipped).")
    assert runner.interruption(run, "04_orpo_training") == ("Interrupted in 04_orpo_training before its first logged "
                                                            "step; the same command restarts training (no complete "
                                                            "checkpoint yet).")
    logged = "step     1/60  loss=0.7\nstep    30/60  loss=0.5\n"  # helpers.modeling.PlainProgress's lines
    progress = nbformat.v4.new_output("stream", name="stdout", text=logged)
    run.notebooks.mkdir(parents=True)  # what papermill has written of the executed notebook when the Ctrl-C came
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("train()", outputs=[progress])]),
                   run.notebooks / "04_orpo_training.ipynb")
    for step in (20, 40):
        (run.checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (run.checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (run.checkpoints / "checkpoint-20" / "adapter_model.safetensors").write_bytes(b"x")  # 40: cut short by the kill
    assert runner.interruption(run, "04_orpo_training") == ("Interrupted in 04_orpo_training at step 30; the same "
                                                            "command resumes from checkpoint-20.")
    assert capsys.readouterr().out == "", "one line: the notes on skipped checkpoints stay unsaid"
    write_json(run.train_summary, {})
    assert runner.interruption(run, "04_orpo_training").startswith("Interrupted between notebooks;")
