"""Finished runs side by side: the plumbing of notebooks/06_compare_runs.ipynb (and of `python -m runner.sweep`).

Notebook 06 keeps in its cells what a learner should read (which numbers of eval.json go into the table); this module
reads the run directories, formats the table, draws the overlaid training curves and writes the sentences under them.

    python -m runner.compare tiny-beta0.05 tiny-beta0.1 --out-name my-comparison   # executes notebook 06
    python -m runner.compare "tiny-*"                                            # a glob: every finished match

A comparison folder `outputs/<out_name>/` holds the executed notebook, `curves.png` and `comparison.json` (the
table and every plotted series).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import fields
from pathlib import Path

import matplotlib.pyplot as plt

from helpers.plots import OR_TERM_LABEL, read_log_history
from helpers.profiles import RunConfig
from helpers.rundir import REPO_ROOT, RunDir, outputs_root, read_json, write_json

NOTEBOOK = REPO_ROOT / "notebooks" / "06_compare_runs.ipynb"
FIGURE, SUMMARY = "curves.png", "comparison.json"
# (key in the log history, panel title); `or_term` = beta x (-log_odds_ratio), the term the ORPO loss adds
CURVES = (("loss", "Total ORPO loss"), ("nll_loss", "NLL term (SFT part)"),
          ("or_term", f"Odds-ratio term {OR_TERM_LABEL}"), ("rewards/margins", "Reward margin = chosen − rejected"))


# ---------------------------------------------------------------- reading runs
def find_runs(runs: list[str] | str, root: Path | None = None) -> list[Path]:
    """Notebook 06: a list of run names (kept in its order) or a glob string such as "tiny-*" (sorted; archived
    runs, `<name>.replaced-<time>`, left out) -> the finished run directories (those with eval.json).

    A named run that is missing or unfinished is an error that says what to run; so is a glob that matches none."""
    root = Path(root or outputs_root())
    if isinstance(runs, str):
        found = sorted(p for p in root.glob(runs) if RunDir(p).is_finished() and ".replaced-" not in p.name)
        if not found:
            raise FileNotFoundError(f"No finished run (a folder with eval.json) matches {runs!r} in {root}. Fix: "
                                    "finish a run first (`python -m runner`) or a sweep (`python -m runner.sweep "
                                    "--sweep beta=0.05,0.1,0.25`), or set `runs` to a list of run names.")
        return found
    missing = [name for name in runs if not RunDir(root / name).is_finished()]
    if missing:
        raise FileNotFoundError(f"Run(s) {missing} are missing or unfinished (no eval.json in {root}). Fix: finish "
                                "them (the same `python -m runner --run-name <name>` resumes), or leave them out.")
    if not runs:
        raise FileNotFoundError("`runs` is empty. Fix: name at least one finished run, or pass a glob such as '*'.")
    return [root / name for name in runs]


def load_run(path: Path) -> dict:
    """One finished run as notebook 06 uses it: name, params.json, eval.json and the log history (metrics.jsonl)."""
    run = RunDir(Path(path))
    return {"name": run.root.name, "params": read_json(run.params), "eval": read_json(run.eval_json),
            "history": read_log_history(run.metrics) if run.metrics.exists() else []}


def differing_parameters(loaded: list[dict]) -> list[str]:
    """The parameters (params.json) whose values are not the same in every run, in RunConfig's order; run_name is
    always different and left out."""
    order = [f.name for f in fields(RunConfig)]
    names = {k for run in loaded for k in run["params"]} - {"run_name"}
    differ = [k for k in names if len({json.dumps(run["params"].get(k), sort_keys=True) for run in loaded}) > 1]
    return sorted(differ, key=lambda k: (order.index(k) if k in order else len(order), k))


# ---------------------------------------------------------------- the table
def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Rows (dicts with the same keys) -> an aligned plain-text table; numbers right-aligned, None as n/a."""
    if not rows:
        return "(no runs)"
    columns = list(rows[0])
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


# ---------------------------------------------------------------- the curves
def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def curve_series(history: list[dict], beta: float) -> dict[str, dict[str, list]]:
    """The train records' series notebook 06 overlays: {key: {"steps": [...], "values": [...]}} for each key of
    CURVES; `or_term` is beta x (-log_odds_ratio) (helpers/plots.py's docstring has TRL's logged names)."""
    series = {key: {"steps": [], "values": []} for key, _ in CURVES}
    for record in history:
        if "step" not in record or not _finite(record.get("loss")):  # train records only (eval ones hold eval_loss)
            continue
        values = dict(record)
        if _finite(record.get("log_odds_ratio")):
            values["or_term"] = -beta * float(record["log_odds_ratio"])
        for key in series:
            if _finite(values.get(key)):
                series[key]["steps"].append(record["step"])
                series[key]["values"].append(float(values[key]))
    return series


def comparison_figure(loaded: list[dict], path: Path | None = None, *, figsize=(10.5, 7.0)):
    """Notebook 06: the train curves of every run overlaid, one colour per run, in a 2x2 grid (total loss, NLL term,
    odds-ratio term on a log axis when it is positive, reward margin); saved as PNG when `path` is given."""
    fig, axes = plt.subplots(2, 2, figsize=figsize)
    colours = plt.get_cmap("tab10")
    for i, run in enumerate(loaded):
        series = curve_series(run["history"], run["params"]["beta"])
        for ax, (key, _) in zip(axes.flat, CURVES):
            if series[key]["steps"]:
                ax.plot(series[key]["steps"], series[key]["values"], color=colours(i % 10), linewidth=1.6,
                        label=run["name"])
    for ax, (key, title) in zip(axes.flat, CURVES):
        lines = ax.get_lines()
        if not lines:
            ax.text(0.5, 0.5, "not in these log histories", transform=ax.transAxes, ha="center", va="center")
        if key == "or_term" and lines and min(min(line.get_ydata()) for line in lines) > 0:
            ax.set_yscale("log")
            title += " (log scale)"
        if key == "rewards/margins":
            ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
    fig.suptitle("Training curves (train records, logged every logging_steps)", fontsize=11)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


# ---------------------------------------------------------------- the sentences
def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def _best(loaded: list[dict], value, what: str, fmt) -> str | None:
    """'<what> was highest for <run> (<value>) ...' over the runs with a value, or None if none has one."""
    scored = [(run["name"], value(run)) for run in loaded if value(run) is not None]
    if not scored:
        return None
    if len(scored) == 1:
        return f"{what} was {fmt(scored[0][1])} ({scored[0][0]})."
    top, low = max(v for _, v in scored), min(v for _, v in scored)
    if top == low:
        return f"{what} was the same in every run: {fmt(top)}."

    def who(value):
        names = [name for name, v in scored if v == value]
        return names[0] if len(names) == 1 else " and ".join(names) + " (tied)"
    return f"{what} was highest for {who(top)} at {fmt(top)}; lowest for {who(low)} at {fmt(low)}."


def _late_or_term(run: dict) -> tuple[float, float] | None:
    """(odds-ratio term, the same without beta), each the mean over the train records of the last quarter of the
    run's logged steps (one logged step is noisy), or None without log_odds_ratio records."""
    train = [r for r in run["history"] if "step" in r and _finite(r.get("loss")) and _finite(r.get("log_odds_ratio"))]
    if not train:
        return None
    late = [-float(r["log_odds_ratio"]) for r in train if r["step"] >= 0.75 * train[-1]["step"]]
    unscaled = sum(late) / len(late)
    return run["params"]["beta"] * unscaled, unscaled


def _trend(values: list[float]) -> str:
    pairs = list(zip(values, values[1:]))
    if all(b > a for a, b in pairs):
        return "rises"
    if all(b < a for a, b in pairs):
        return "falls"
    return "does not move in one direction"


def _numbers(values) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def describe_comparison(loaded: list[dict]) -> str:
    """Notebook 06, after the figure: which run had the best held-out reward accuracy and task success, and how the
    odds-ratio term differs with beta; every statement read from the runs' own numbers."""
    def tuned(key):
        return lambda run: (run["eval"].get("tuned") or {}).get(key)

    sentences = [_best(loaded, tuned("reward_accuracy"), "Held-out reward accuracy (tuned)", _pct),
                 _best(loaded, lambda run: (run["eval"].get("task_success") or {}).get("tuned"),
                       "Task success of the tuned model's greedy answers", _pct)
                 or "No run has a task success (its prompts have no programmatic checker).",
                 _best(loaded, tuned("mean_margin"), "The mean held-out margin (tuned)", lambda v: f"{v:+.4g}")]
    differ = differing_parameters(loaded)
    terms = sorted((run["params"]["beta"], run["name"], *_late_or_term(run)) for run in loaded if _late_or_term(run))
    late = f"the odds-ratio term {OR_TERM_LABEL}, averaged over the last quarter of the logged train steps,"
    if not terms:
        return " ".join(s for s in sentences if s)
    if "beta" not in differ:
        values = [t for _, _, t, _ in terms]
        what = f"was {values[0]:.3g}" if len(values) == 1 else f"ranged from {min(values):.3g} to {max(values):.3g}"
        every = " in every run" if len(values) > 1 else ""
        sentences.append(f"With beta = {terms[0][0]:g}{every}, {late} {what}.")
        return " ".join(s for s in sentences if s)
    text = "Margins are in beta units (beta x the gap in mean log-prob), so a larger beta shows a larger margin for " \
           "the same gap"
    gaps = [f"{tuned('mean_margin')(run) / run['params']['beta']:.3g} ({run['name']})" for run in loaded
            if _finite(tuned("mean_margin")(run))]
    sentences.append(text + (": divided by beta, the held-out gap was " + ", ".join(gaps) if gaps else "") + ".")
    if differ != ["beta"] or len({beta for beta, *_ in terms}) < len(terms):  # other parameters differ as well
        sentences.append(f"Sorted by beta, {late} was " + "; ".join(
            f"{name} (beta {beta:g}): {term:.3g}" for beta, name, term, _ in terms) + ".")
        return " ".join(s for s in sentences if s)
    scaled, unscaled = [t for _, _, t, _ in terms], [u for *_, u in terms]
    text = (f"With beta = {', '.join(f'{beta:g}' for beta, *_ in terms)}, {late} was {_numbers(scaled)}: it "
            f"{_trend(scaled)} with beta. Without the beta factor, −mean log σ(log-odds) was {_numbers(unscaled)}: "
            f"it {_trend(unscaled)} as beta rises")
    if _trend(unscaled) == "falls":
        text += ", so the runs with a larger beta pushed the chosen answers' odds further above the rejected ones'"
    sentences.append(text + ".")
    return " ".join(s for s in sentences if s)


# ---------------------------------------------------------------- the comparison folder
def comparison_folder(out_name: str) -> Path:
    """Notebook 06: outputs/<out_name>/, created; a plain folder name that is not a run's own directory."""
    if not out_name or any(c in out_name for c in "/\\") or out_name.startswith("."):
        raise ValueError(f"out_name {out_name!r} must be a plain folder name. Fix: e.g. 'beta-comparison'.")
    folder = outputs_root() / out_name
    if RunDir(folder).params.exists():
        raise ValueError(f"out_name {out_name!r} is a run's directory (it holds params.json); a comparison never "
                         f"writes into a run. Fix: pick another name, e.g. '{out_name}-comparison'.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_comparison(folder: Path, loaded: list[dict], rows: list[dict]) -> Path:
    """Notebook 06's last step: comparison.json in the comparison folder, with the runs, the parameters that differ,
    the table and every plotted series (what tests and later tools read instead of the PNG)."""
    summary = {"runs": [run["name"] for run in loaded], "differing_parameters": differing_parameters(loaded),
               "table": rows, "figure": FIGURE,
               "curves": {run["name"]: curve_series(run["history"], run["params"]["beta"]) for run in loaded}}
    write_json(Path(folder) / SUMMARY, summary)
    return Path(folder) / SUMMARY


def execute_comparison(runs: list[str] | str, out_name: str, kernel: str = "python3") -> Path:
    """Execute notebook 06 with papermill (cwd notebooks/, as the runner runs 01-05) into outputs/<out_name>/; returns
    the comparison folder. Raises papermill's PapermillExecutionError when a cell fails."""
    import papermill as pm

    folder = comparison_folder(out_name)
    pm.execute_notebook(NOTEBOOK, folder / NOTEBOOK.name, parameters={"runs": runs, "out_name": out_name},
                        kernel_name=kernel, progress_bar=False, log_output=True, cwd=REPO_ROOT / "notebooks")
    return folder


def log_cell_outputs() -> None:
    """Print what the executed notebook's cells print (papermill's log_output), without its per-cell frame lines."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not str(record.msg).startswith(("Executing Cell", "Ending Cell")))
    for noisy in ("papermill.translators", "traitlets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished run names, or one glob such as 'tiny-*' (quote it)")
    parser.add_argument("--out-name", default="comparison", help="comparison folder under outputs/ (default: "
                                                                 "comparison)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    args = parser.parse_args(argv)
    log_cell_outputs()
    runs = args.runs[0] if len(args.runs) == 1 and any(c in args.runs[0] for c in "*?[") else args.runs
    try:  # a missing run or a bad folder name fails here in a second, not inside the notebook
        find_runs(runs)
        comparison_folder(args.out_name)
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    import papermill as pm

    try:
        folder = execute_comparison(runs, args.out_name, args.kernel)
    except pm.PapermillExecutionError as err:
        print(f"FAILED: notebooks/{NOTEBOOK.name}, cell {err.exec_count} ({err.ename}): {err.evalue}\nThe executed "
              f"notebook with the traceback: outputs/{args.out_name}/{NOTEBOOK.name}", file=sys.stderr)
        return 1
    print(f"Comparison: outputs/{folder.name}/ ({NOTEBOOK.name}, {FIGURE}, {SUMMARY})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
