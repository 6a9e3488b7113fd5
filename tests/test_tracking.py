"""Optional experiment tracking: `-p report_to tensorboard` (helpers/tracking.py, notebook 04, runner/sweep.py).

Fast: where the event files go (grouped by sweep), the sweep's group for its runs, one clear error before anything
runs when tensorboard is missing. Slow: a short series 01-04 on the h100 profile's training path with 2 processes
writes one event file (rank 0) holding the train loss of metrics.jsonl, and the default run writes none.
Needs requirements-tracking.txt (tensorboard) for the slow part.
"""

import json
import os
from pathlib import Path

import pytest
from rehearsal import cpu_rehearsal

import runner
from helpers import tracking
from helpers.profiles import resolve_config
from helpers.rundir import RunDir
from runner import sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(tmp_path))
    monkeypatch.delenv(tracking.GROUP_ENV, raising=False)
    return tmp_path


# ---- fast -------------------------------------------------------------------------------------------------------

def test_a_run_logs_to_its_own_group_and_a_sweeps_runs_share_the_sweeps(outputs, monkeypatch):
    assert tracking.tensorboard_dir(outputs / "tiny-demo") == outputs / "tensorboard" / "tiny-demo" / "tiny-demo"
    monkeypatch.setenv(tracking.GROUP_ENV, "b")
    assert tracking.tensorboard_dir(outputs / "b-beta0.05") == outputs / "tensorboard" / "b" / "b-beta0.05"


def test_the_sweep_groups_its_runs_under_its_base_name_and_restores_the_environment(outputs, monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "main", lambda argv: seen.append(os.environ.get(tracking.GROUP_ENV)) or 1)
    assert sweep.main(["--sweep", "beta=0.05,0.1", "--run-name", "b"]) == 1  # runs that "fail": nothing to compare
    assert seen == ["b", "b"] and tracking.GROUP_ENV not in os.environ
    seen.clear()
    assert sweep.main(["--sweep", "beta=0.05"]) == 1  # no --run-name: the runs are tiny-beta..., the group tiny
    assert seen == ["tiny"]
    monkeypatch.setenv(tracking.GROUP_ENV, "mine")  # a group you chose is kept
    assert sweep.main(["--sweep", "beta=0.05", "--run-name", "b"]) == 1
    assert seen == ["tiny", "mine"] and os.environ[tracking.GROUP_ENV] == "mine"


def test_without_tensorboard_the_runner_and_the_sweep_stop_before_anything_runs(outputs, monkeypatch, capsys):
    monkeypatch.setattr(tracking, "tensorboard_installed", lambda: False)
    assert runner.main(["--run-name", "tb", "-p", "report_to", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.count("ERROR") == 1 and "pip install -r requirements-tracking.txt" in err
    assert not (outputs / "tb").exists()  # no run folder: `-p report_to none` then starts it cleanly
    assert sweep.main(["--sweep", "beta=0.05,0.1", "--run-name", "s", "-p", "report_to", "tensorboard"]) == 2
    assert "requirements-tracking.txt" in capsys.readouterr().err and not list(outputs.iterdir())
    tracking.check_tracking(resolve_config("tiny", {}))  # the default needs nothing


def test_a_fresh_start_moves_an_earlier_folder_aside_and_a_resume_appends(outputs, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    run = RunDir(outputs / "r")
    folder = tracking.tensorboard_dir(run.root)
    folder.mkdir(parents=True)
    (folder / "events.out.tfevents.1").write_text("old")
    (run.checkpoints / "checkpoint-4").mkdir(parents=True)
    assert tracking.start_tensorboard(run) == folder and (folder / "events.out.tfevents.1").exists()  # resuming
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(folder)
    (run.checkpoints / "checkpoint-4").rmdir()
    assert tracking.start_tensorboard(run) == folder and not folder.exists()  # from step 0: the old one moved
    assert [p.name.split(".replaced-")[0] for p in folder.parent.iterdir()] == ["r"]


def test_notebook_04_checks_before_the_model_loads_and_passes_report_to():
    cells = ["".join(c["source"]) for c in json.loads((ROOT / "notebooks" / "04_orpo_training.ipynb").read_text())
             ["cells"] if c["cell_type"] == "code"]
    source = "\n".join(cells)
    assert source.index("check_tracking(cfg)") < source.index("AutoModelForCausalLM.from_pretrained(")
    assert "report_to=cfg.report_to," in source
    assert source.index("start_tensorboard(run)") < source.index("trainer = TrainerClass(")


def test_requirements_tracking_pins_tensorboard():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements-tracking.txt").read_text().splitlines()]
    assert [line for line in lines if line] == [f"tensorboard=={line.split('==')[1]}" for line in lines
                                                if line.startswith("tensorboard==")]


# ---- slow: a short series with tracking on, and one without -----------------------------------------------------

def short_series(name: str, profile: str, **extra) -> list[str]:
    args = ["--run-name", name, "--only", "01,02,03,04"]
    for key, value in {**cpu_rehearsal(profile, max_steps=8), **extra}.items():
        args += ["-p", key, str(value)]
    return args


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    pytest.importorskip("tensorboard", reason="pip install -r requirements-tracking.txt")
    outputs = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORPO_OUTPUTS_DIR", str(outputs))
        patch.delenv(tracking.GROUP_ENV, raising=False)
        # the GPU profiles' path (FastORPOTrainer) in 2 gloo processes: only rank 0 may write
        assert runner.main(short_series("tracked", "h100", num_processes=2, report_to="tensorboard")) == 0
        assert runner.main(short_series("plain", "tiny")) == 0  # report_to stays at its default, "none"
    return outputs


@pytest.mark.slow
def test_tensorboard_gets_the_train_loss_of_metrics_jsonl_from_rank_0_only(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = two_runs / "tensorboard" / "tracked" / "tracked"
    events = list(folder.glob("events.out.tfevents.*"))
    assert len(events) == 1, events  # one writer: rank 0
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    logged = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
    records = [json.loads(line) for line in (two_runs / "tracked" / "metrics.jsonl").read_text().splitlines()]
    expected = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert [s for s, _ in logged] == [s for s, _ in expected] == [1, 4, 8]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert "eval/loss" in accumulator.Tags()["scalars"]
    notebook = (two_runs / "tracked" / "notebooks" / "04_orpo_training.ipynb").read_text()
    assert "trainer FastORPOTrainer" in notebook and f"tensorboard --logdir {folder.parent}" in notebook


@pytest.mark.slow
def test_the_default_run_writes_no_event_files(two_runs):
    assert sorted(p.name for p in (two_runs / "tensorboard").iterdir()) == ["tracked"]
    assert not list((two_runs / "plain").rglob("events.out.tfevents.*"))
    assert (two_runs / "plain" / "metrics.jsonl").exists()
