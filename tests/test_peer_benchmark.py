"""The peer benchmark's plumbing on a CPU (benchmarks/peer_benchmark.py --tiny): each row in its own process, as the
GPU box runs them, then `combine`. Its numbers mean nothing; what is checked is that every row that can run here
trains, counts tokens the same way, and that the comparison picks the fastest peer and says whether the goal holds."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.scripts import ROOT

SCRIPT = ROOT / "benchmarks" / "peer_benchmark.py"
pytestmark = pytest.mark.slow


def run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    work = tmp_path_factory.mktemp("peer")
    built = run("build", "--work", str(work), "--tiny")
    assert built.returncode == 0, built.stderr[-2000:]
    out = {}
    for name, extra in (("trl_best", []), ("ours", []), ("seed", ["--scoring-reps", "2"])):
        done = run("row", name, "--work", str(work), "--tiny", "--out", str(work / f"peer_{name}.json"), *extra)
        assert done.returncode == 0, f"{name}: {done.stdout[-1500:]}\n{done.stderr[-3000:]}"
        out[name] = work / f"peer_{name}.json"
    return work, out


def test_each_row_trains_and_counts_tokens(rows):
    _, paths = rows
    for name, path in paths.items():
        r = json.loads(path.read_text())
        assert r["row"] == name and "error" not in r
        assert r["timed_steps"] >= 1 and r["tokens_per_s"] > 0 and r["real_tokens"] > 0
        assert r["versions"]["trl"] and r["versions"]["transformers"]
    trl_best = json.loads(paths["trl_best"].read_text())
    assert trl_best["micro_batch"] == 16 and trl_best["probes"][0]["micro_batch"] == 16
    # stock ORPOTrainer cannot group by length (transformers' sampler wants `input_ids`): the row says so
    assert trl_best["settings"]["sampling"].startswith("random (group_by_length refused")
    ours = json.loads(paths["ours"].read_text())
    assert ours["settings"]["source"].startswith("notebooks/04_orpo_training.ipynb")


def test_scoring_reps_alternate_and_report_a_median(rows):
    _, paths = rows
    sc = json.loads(paths["seed"].read_text())["scoring"]
    assert [r["order"][0] for r in sc["reps"]] == ["evaluate", "scorer"]
    ratios = sorted(r["ratio"] for r in sc["reps"])
    assert sc["ratio_min"] == ratios[0] and sc["ratio_max"] == ratios[-1]
    assert sc["ratio_min"] <= sc["ratio_median"] <= sc["ratio_max"]


def test_combine_compares_with_the_fastest_peer(rows, tmp_path):
    work, paths = rows
    done = run("combine", *map(str, paths.values()), "--out", str(tmp_path / "all.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "all.json").read_text())["summary"]
    rows_ = {n: json.loads(p.read_text()) for n, p in paths.items()}
    assert summary["fastest_peer"] == "trl_best"  # the only peer that runs here
    expected = round(rows_["ours"]["tokens_per_s"] / rows_["trl_best"]["tokens_per_s"], 2)
    assert summary["ours_over_fastest_peer"] == expected
    assert summary["goal_met"] == (expected >= 1.5)  # peaks are None on a CPU: only the ratio decides
    assert "trl_best" in done.stdout and "ours" in done.stdout
    # part 2 of a run combined with part 1's committed file: its rows come along, a repeated row counts its median
    again = run("combine", str(tmp_path / "all.json"), str(paths["ours"]), "--out", str(tmp_path / "both.json"))
    assert again.returncode == 0, again.stderr[-2000:]
    both = json.loads((tmp_path / "both.json").read_text())
    assert set(both["rows"]) == set(paths) and both["rows"]["ours"]["repeats_tokens_per_s"] == [
        rows_["ours"]["tokens_per_s"]] * 2
    # the scoring reps of every run that scored count together, and each run's own median is kept
    ratios = [rep["ratio"] for rep in rows_["seed"]["scoring"]["reps"]]
    assert both["summary"]["scoring_ratio_median_per_run"] == [rows_["seed"]["scoring"]["ratio_median"]]
    assert both["summary"]["scoring_ratio_spread"] == [min(ratios), max(ratios)]
    # each run's own ratio (ours and the peer on one machine) is kept beside the median's, however often combined
    assert both["summary"]["ours_over_fastest_peer_per_run"] == [expected]
    twice = run("combine", str(tmp_path / "both.json"), str(tmp_path / "all.json"), "--out", str(tmp_path / "3.json"))
    three = json.loads((tmp_path / "3.json").read_text())["summary"]
    assert three["ours_over_fastest_peer_per_run"] == [expected] * 2
    # every input's runs are carried (here the same run, given twice)
    assert three["scoring_ratio_median_per_run"] == [rows_["seed"]["scoring"]["ratio_median"]] * 2


def test_a_failed_row_is_recorded_not_fatal(rows, tmp_path):
    work, _ = rows
    done = run("row", "unsloth", "--work", str(work), "--tiny", "--out", str(tmp_path / "u.json"))
    if importlib.util.find_spec("unsloth") is not None:
        pytest.skip("unsloth is installed here: its row is a real run, not a failure")
    assert done.returncode == 1
    r = json.loads((tmp_path / "u.json").read_text())
    assert "unsloth" in r["error"].lower() and r["traceback"]
