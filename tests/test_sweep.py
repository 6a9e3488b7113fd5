"""Sweeps (`python -m runner.sweep`) and the comparison of runs (runner/compare.py, notebooks/06_compare_runs.ipynb).

Fast: runner/compare.py on tiny synthetic run folders (no training), notebook 06 executed on them, and the sweep's
planning and argument passing with the runner replaced. Slow: a real 3-value beta sweep on the offline default.
"""

import json
import math
from pathlib import Path

import pytest

import runner
from helpers.profiles import ParameterError, resolve_config
from helpers.rundir import write_json
from runner import compare, sweep

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["-p", "max_steps", "40", "-p", "eval_steps", "20", "-p", "save_steps", "20", "-p", "logging_steps", "10",
         "-p", "n_train", "200", "-p", "n_eval", "60"]


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(tmp_path))
    return tmp_path


def make_run(root: Path, name: str, beta: float, accuracy: float, success: float | None, *, finished=True,
             **params) -> Path:
    """A run folder as notebooks 01-05 leave it, as far as notebook 06 reads it; log_odds_ratio shrinks with beta."""
    run = root / name
    write_json(run / "params.json", resolve_config("tiny", {"run_name": name, "beta": beta, **params}).to_dict())
    history = []
    for step in (1, 10, 20, 30):
        lor = -0.7 / (1 + step * beta)  # a larger beta: log-odds rise faster, so -log sigma(log-odds) falls faster
        history.append({"loss": 0.5 - step / 100 - beta * lor, "nll_loss": 0.5 - step / 100, "log_odds_ratio": lor,
                        "rewards/margins": beta * step / 30, "rewards/accuracies": min(1.0, step / 20),
                        "step": step})
    history.append({"eval_loss": 0.4, "eval_log_odds_ratio": -0.2, "step": 30})  # eval records: not plotted
    history.append({"train_runtime": 9.0, "train_loss": 0.4, "step": 30})  # the Trainer's final summary record
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    if finished:
        write_json(run / "eval.json", {
            "n_pairs": 60, "base": {"reward_accuracy": 0.05, "mean_margin": -0.01},
            "tuned": {"reward_accuracy": accuracy, "mean_margin": beta * 0.8},
            "task_success": None if success is None else {"base": 0.1, "tuned": success}})
    return run


@pytest.fixture
def beta_runs(outputs):
    for beta, accuracy, success in ((0.05, 0.9, 0.8), (0.1, 0.95, 0.9), (0.25, 0.97, 0.85)):
        make_run(outputs, f"s-beta{beta}", beta, accuracy, success)
    return ["s-beta0.05", "s-beta0.1", "s-beta0.25"]


# ---- runner/compare.py ------------------------------------------------------------------------------------------

def test_find_runs_takes_names_in_order_or_a_glob_of_finished_runs(beta_runs, outputs):
    assert [p.name for p in compare.find_runs(["s-beta0.25", "s-beta0.05"])] == ["s-beta0.25", "s-beta0.05"]
    make_run(outputs, "s-unfinished", 0.1, 0.5, None, finished=False)
    make_run(outputs, "s-beta0.1.replaced-20250101-000000", 0.1, 0.5, None)  # an archived run
    (outputs / "s-sweep").mkdir()  # a comparison folder
    assert [p.name for p in compare.find_runs("s-*")] == sorted(beta_runs)
    with pytest.raises(FileNotFoundError, match=r"\['s-unfinished', 'nope'\] are missing or unfinished"):
        compare.find_runs(["s-beta0.1", "s-unfinished", "nope"])
    with pytest.raises(FileNotFoundError, match="No finished run"):
        compare.find_runs("other-*")


def test_only_the_parameters_that_differ_are_listed_in_runconfig_order(outputs):
    make_run(outputs, "a", 0.1, 0.9, None, learning_rate=1e-3)
    make_run(outputs, "b", 0.2, 0.9, None, learning_rate=3e-3)
    make_run(outputs, "c", 0.2, 0.9, None, learning_rate=3e-3)
    loaded = [compare.load_run(p) for p in compare.find_runs("*")]
    assert compare.differing_parameters(loaded) == ["learning_rate", "beta"]
    assert compare.differing_parameters(loaded[1:]) == []


def test_curves_are_the_train_records_and_the_odds_ratio_term_is_beta_times_minus_log_odds_ratio(beta_runs):
    run = compare.load_run(compare.find_runs(["s-beta0.25"])[0])
    series = compare.curve_series(run["history"], 0.25)
    assert set(series) == {"loss", "nll_loss", "or_term", "rewards/margins"}
    assert all(s["steps"] == [1, 10, 20, 30] for s in series.values())  # no eval or summary record
    lors = [r["log_odds_ratio"] for r in run["history"] if "log_odds_ratio" in r]
    assert series["or_term"]["values"] == pytest.approx([-0.25 * v for v in lors])


def test_figure_overlays_every_run_in_four_panels_and_saves_a_png(beta_runs, outputs):
    loaded = [compare.load_run(p) for p in compare.find_runs(beta_runs)]
    fig = compare.comparison_figure(loaded, outputs / "cmp" / "curves.png")
    assert (outputs / "cmp" / "curves.png").stat().st_size > 10_000
    assert len(fig.axes) == 4 and all(len(ax.get_lines()) >= 3 for ax in fig.axes)
    assert [line.get_label() for line in fig.axes[2].get_lines()] == beta_runs
    assert fig.axes[2].get_yscale() == "log"  # the odds-ratio term is positive


def test_table_is_aligned_with_numbers_right_and_missing_values_as_n_a():
    text = compare.format_table([{"run": "a", "beta": 0.05, "task success": None},
                                 {"run": "long-name", "beta": 0.25, "task success": 0.875}])
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines[:2]}) == 1
    assert lines[2] == "a          0.05           n/a" and lines[3].endswith("0.25         0.875")


def test_sentences_name_the_best_runs_and_how_the_odds_ratio_term_moves_with_beta(beta_runs):
    loaded = [compare.load_run(p) for p in compare.find_runs(beta_runs)]
    text = compare.describe_comparison(loaded)
    assert "Held-out reward accuracy (tuned) was highest for s-beta0.25 at 97.0%; lowest for s-beta0.05 at 90.0%" \
        in text
    assert "Task success of the tuned model's greedy answers was highest for s-beta0.1 at 90.0%" in text
    assert "With beta = 0.05, 0.1, 0.25, the odds-ratio term" in text and "it rises with beta" in text
    assert "it falls as beta rises, so the runs with a larger beta pushed" in text
    loaded[1]["eval"]["tuned"]["reward_accuracy"] = 0.9
    assert "lowest for s-beta0.05 and s-beta0.1 (tied) at 90.0%" in compare.describe_comparison(loaded)
    one = compare.describe_comparison(loaded[:1])
    assert "was 90.0% (s-beta0.05)" in one and "With beta = 0.05, the odds-ratio term" in one


def test_without_a_checker_the_sentences_say_so(outputs):
    make_run(outputs, "real-a", 0.1, 0.7, None)
    make_run(outputs, "real-b", 0.1, 0.7, None, learning_rate=1e-4)
    loaded = [compare.load_run(p) for p in compare.find_runs("real-*")]
    text = compare.describe_comparison(loaded)
    assert "was the same in every run: 70.0%" in text and "No run has a task success" in text
    assert "With beta = 0.1 in every run, the odds-ratio term" in text and "ranged from" in text


def test_a_comparison_never_writes_into_a_run(beta_runs):
    with pytest.raises(ValueError, match="is a run's directory"):
        compare.comparison_folder("s-beta0.1")
    with pytest.raises(ValueError, match="plain folder name"):
        compare.comparison_folder("../elsewhere")


def test_notebook_06_has_the_shared_setup_cell_and_two_parameters():
    nb06 = json.loads((ROOT / "notebooks" / "06_compare_runs.ipynb").read_text())
    nb05 = json.loads((ROOT / "notebooks" / "05_evaluation.ipynb").read_text())
    first = [next(c for c in nb["cells"] if c["cell_type"] == "code")["source"] for nb in (nb06, nb05)]
    assert "".join(first[0]) == "".join(first[1])
    intro = "".join(nb06["cells"][0]["source"])
    assert nb06["cells"][0]["cell_type"] == "markdown"
    assert all(word in intro for word in ("**What you learn:**", "**Reads**", "**Writes**", "**Takes**"))
    [params] = [c for c in nb06["cells"] if "parameters" in c["metadata"].get("tags", [])]
    from papermill.translators import PythonTranslator
    assert [p.name for p in PythonTranslator.inspect({"source": "".join(params["source"])})] == ["runs", "out_name"]
    assert not any(c.get("outputs") and c["cell_type"] == "code" and any(
        o.get("output_type") == "error" for o in c["outputs"]) for c in nb06["cells"])


def test_notebook_06_runs_on_finished_runs_and_writes_the_comparison(beta_runs, outputs, capsys):
    assert compare.main([*beta_runs, "--out-name", "s-sweep"]) == 0
    folder = outputs / "s-sweep"
    summary = json.loads((folder / "comparison.json").read_text())
    assert summary["runs"] == beta_runs and summary["differing_parameters"] == ["beta"]
    assert [row["beta"] for row in summary["table"]] == [0.05, 0.1, 0.25]
    assert [row["reward accuracy"] for row in summary["table"]] == [0.9, 0.95, 0.97]
    assert (folder / "curves.png").stat().st_size > 10_000
    executed = (folder / "06_compare_runs.ipynb").read_text()
    assert "it rises with beta" in executed and '"output_type": "error"' not in executed
    assert "Comparison: outputs/s-sweep/" in capsys.readouterr().out
    assert compare.main(["nope-*"]) == 2


# ---- runner/sweep.py without training ---------------------------------------------------------------------------

def test_sweep_flags_become_a_grid_of_plain_run_names(outputs):
    sweeps = sweep.parse_sweeps(["beta=0.05,0.25", "learning_rate=1e-3, 3e-3"])
    assert sweeps == [("beta", ["0.05", "0.25"]), ("learning_rate", ["1e-3", "3e-3"])]
    runs = sweep.plan(runner.parse_args(["--run-name", "g"]), sweeps)
    assert [name for name, _, _ in runs] == ["g-beta0.05-learning_rate1e-3", "g-beta0.05-learning_rate3e-3",
                                             "g-beta0.25-learning_rate1e-3", "g-beta0.25-learning_rate3e-3"]
    assert sweep.run_name_for("b", [("model_id", "/models/x y")]) == "b-model_id_models_x_y"


@pytest.mark.parametrize("specs, argv, message", [
    (["beta"], [], "is not NAME=V1,V2"),
    (["beta=0.1", "beta=0.2"], [], "each parameter once"),
    (["run_name=a,b"], [], "a sweep varies parameters"),
    (["beta=0.1,-1"], [], "`beta` must be > 0"),
    (["betta=0.1"], [], "Unknown parameter(s) ['betta']"),
    (["beta=0.1,0.2"], ["-p", "beta", "0.3"], "`beta` is swept and also set with -p"),
])
def test_every_combination_is_checked_before_any_run(outputs, specs, argv, message):
    with pytest.raises(ParameterError) as err:
        sweep.plan(runner.parse_args(argv), sweep.parse_sweeps(specs))
    assert message in str(err.value)


@pytest.fixture
def fake_series(outputs, monkeypatch):
    """runner.main replaced by a stand-in that leaves a finished run; the comparison notebook is not executed."""
    calls = {"runner": [], "compare": []}

    def fake_main(argv):
        calls["runner"].append(argv)
        args = runner.parse_args(argv)
        cfg = resolve_config(args.profile, {**runner.collect_overrides(args), "run_name": args.run_name})
        make_run(outputs, args.run_name, cfg.beta, 0.9, 0.9, **{k: v for k, v in runner.collect_overrides(args).items()
                                                              if k != "beta"})
        return 0
    monkeypatch.setattr(runner, "main", fake_main)
    monkeypatch.setattr(compare, "execute_comparison",
                        lambda runs, out_name, kernel: calls["compare"].append((runs, out_name, kernel))
                        or compare.comparison_folder(out_name))
    return calls


def test_sweep_passes_the_runner_options_to_every_run_then_compares(fake_series, capsys):
    argv = ["--sweep", "beta=0.05,0.1", "--run-name", "b", "-p", "max_steps", "7", "--kernel", "python3"]
    assert sweep.main(argv) == 0
    assert fake_series["runner"] == [
        ["--run-name", "b", "-p", "max_steps", "7", "--kernel", "python3", "--run-name", "b-beta0.05",
         "-p", "beta", "0.05"],
        ["--run-name", "b", "-p", "max_steps", "7", "--kernel", "python3", "--run-name", "b-beta0.1",
         "-p", "beta", "0.1"]]
    assert fake_series["compare"] == [(["b-beta0.05", "b-beta0.1"], "b-sweep", "python3")]
    capsys.readouterr()
    assert sweep.main(argv) == 0  # the same command again: both runs are finished with these parameters
    assert len(fake_series["runner"]) == 2 and "finished, skipped" in capsys.readouterr().out
    assert sweep.main(["--sweep", "beta=0.05", "--run-name", "b", "-p", "max_steps", "8"]) == 2  # other parameters
    assert "is finished with other parameters {'max_steps': (7, 8)}" in capsys.readouterr().err


def test_a_failed_run_does_not_stop_the_others_and_the_sweep_reports_it(fake_series, monkeypatch, capsys):
    fake = runner.main
    monkeypatch.setattr(runner, "main", lambda argv: 1 if "s-beta0.05" in argv else fake(argv))
    assert sweep.main(["--sweep", "beta=0.05,0.1", "--run-name", "s"]) == 1
    assert fake_series["compare"] == [(["s-beta0.1"], "s-sweep", "python3")]
    assert "failed: s-beta0.05" in capsys.readouterr().out


def test_the_comparison_folder_is_never_a_run(outputs):
    make_run(outputs, "x-sweep", 0.1, 0.9, None)
    with pytest.raises(ParameterError, match="outputs/x-sweep/ is a run's directory"):
        sweep.plan(runner.parse_args(["--run-name", "x"]), sweep.parse_sweeps(["beta=0.1,0.2"]))


# ---- a real sweep -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORPO_OUTPUTS_DIR", str(outputs))
        assert sweep.main(["--sweep", "beta=0.05,0.1,0.25", "--run-name", "b", *SHORT]) == 0
    return outputs


@pytest.mark.slow
def test_beta_sweep_runs_each_series_and_compares_them(real_sweep):
    summary = json.loads((real_sweep / "b-sweep" / "comparison.json").read_text())
    names = ["b-beta0.05", "b-beta0.1", "b-beta0.25"]
    assert summary["runs"] == names and summary["differing_parameters"] == ["beta"]
    assert len(summary["table"]) == 3 and [row["beta"] for row in summary["table"]] == [0.05, 0.1, 0.25]
    for row in summary["table"]:
        assert 0 <= row["reward accuracy"] <= 1 and 0 <= row["task success"] <= 1 and math.isfinite(row["mean margin"])
    for name in names:
        assert json.loads((real_sweep / name / "params.json").read_text())["max_steps"] == 40
        assert (real_sweep / name / "eval.json").exists()
    assert (real_sweep / "b-sweep" / "curves.png").stat().st_size > 10_000
    executed = (real_sweep / "b-sweep" / "06_compare_runs.ipynb").read_text()
    assert '"output_type": "error"' not in executed and "With beta = 0.05, 0.1, 0.25, the odds-ratio term" in executed


@pytest.mark.slow
def test_sweep_curves_are_finite_and_tell_the_betas_apart(real_sweep):
    curves = json.loads((real_sweep / "b-sweep" / "comparison.json").read_text())["curves"]
    for name, series in curves.items():
        for key, s in series.items():
            assert s["steps"] and all(math.isfinite(v) for v in s["values"]), (name, key)
    terms = {beta: curves[f"b-beta{beta}"]["or_term"] for beta in (0.05, 0.1, 0.25)}
    assert terms[0.05]["steps"] == terms[0.1]["steps"] == terms[0.25]["steps"]
    # step 1 is logged before any update: the same model, so the term is exactly proportional to beta
    assert terms[0.25]["values"][0] / terms[0.05]["values"][0] == pytest.approx(5, rel=1e-4)
    for a, b in ((0.05, 0.1), (0.1, 0.25), (0.05, 0.25)):
        gaps = [abs(x - y) / max(x, y) for x, y in zip(terms[a]["values"], terms[b]["values"])]
        assert min(gaps) > 0.1, (a, b, gaps)  # a different curve at every logged step


@pytest.mark.slow
def test_the_same_sweep_again_skips_its_finished_runs(real_sweep, monkeypatch, capsys):
    monkeypatch.setenv("ORPO_OUTPUTS_DIR", str(real_sweep))
    assert sweep.main(["--sweep", "beta=0.05,0.1,0.25", "--run-name", "b", *SHORT]) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 3

