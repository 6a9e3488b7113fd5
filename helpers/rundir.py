"""The run directory `outputs/<run_name>/`: the only way notebooks hand data to each other (all notebooks).

Every notebook starts with `open_run(...)`: 01 creates the run, 02-05 read `params.json`. A finished run (05 wrote
eval.json) is never overwritten: pick a new run_name, or pass overwrite=True, which *archives* the old run."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

from .profiles import ParameterError, RunConfig, resolve_config

REPO_ROOT = Path(__file__).resolve().parent.parent

# Each notebook after 01 is a stage; the file it writes LAST marks it done (so a kill mid-stage leaves it not done).
STAGE_DONE = {"02": "data_report.json", "03": "model_report.json", "04": "train_summary.json", "05": "eval.json"}


class RunRecordError(FileExistsError):
    """Running this notebook would make the run's record untrue (outputs made with other parameters)."""


def outputs_root() -> Path:
    """`$ORPO_OUTPUTS_DIR` if set (tests point it at a temp folder), else `<repo>/outputs`."""
    return Path(os.environ.get("ORPO_OUTPUTS_DIR") or REPO_ROOT / "outputs")


@dataclass(frozen=True)
class RunDir:
    """Paths of one run. Names, not logic: what lives where is documented in outputs/README.md."""

    root: Path

    params = property(lambda self: self.root / "params.json")
    environment = property(lambda self: self.root / "environment.json")
    data = property(lambda self: self.root / "data")
    figures = property(lambda self: self.root / "figures")
    checkpoints = property(lambda self: self.root / "checkpoints")
    adapter = property(lambda self: self.root / "adapter")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    train_summary = property(lambda self: self.root / "train_summary.json")
    eval_json = property(lambda self: self.root / "eval.json")
    report = property(lambda self: self.root / "report.md")
    notebooks = property(lambda self: self.root / "notebooks")

    def is_finished(self) -> bool:
        return self.eval_json.exists()

    def done_stages(self) -> list[str]:
        """Notebook numbers ("02".."05") whose outputs are complete."""
        return [stage for stage, marker in STAGE_DONE.items() if (self.root / marker).exists()]

    def figure(self, name: str) -> Path:
        self.figures.mkdir(parents=True, exist_ok=True)
        return self.figures / name

    def require(self, path: Path, made_by: str) -> Path:
        """Fail clearly when an earlier notebook's output is missing."""
        if not path.exists():
            raise FileNotFoundError(f"{path.relative_to(self.root.parent)} is missing: run {made_by} first "
                                    f"(or the whole series with `python -m runner`).")
        return path


def write_json(path: Path, data) -> None:
    """Write atomically (temp file + rename) so an interrupted run never leaves half a JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def check_writable(root: Path) -> None:
    """Raise ParameterError if the outputs folder can't be written (before any expensive work)."""
    probe = root / f".write-test-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ParameterError(f"Cannot write to the output folder {root}: {err.strerror}. Fix: set "
                             "ORPO_OUTPUTS_DIR to a writable folder, or fix the folder's permissions.") from None


def archive_run(run: RunDir) -> Path:
    """Move a run aside instead of deleting it (what overwrite=True does)."""
    target = run.root.with_name(f"{run.root.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    run.root.rename(target)
    print(f"Archived the previous run to {target.name}/")
    return target


def open_run(run_name: str, profile: str | None = None, overrides: dict | None = None, *, start: bool = False,
             overwrite: bool = False, has_gpu: bool | None = None, compute_capability: tuple[int, int] | None = None,
             stage: str | None = None) -> tuple[RunConfig, RunDir]:
    """Open (or with start=True, create) a run and return its validated config and paths.

    start=True (notebook 01, the runner): resolve `profile` + overrides and write params.json; an unfinished run
    re-opens only with the same parameters. start=False (notebooks 02-05, `stage` = the notebook's number): read
    params.json and record non-None overrides, unless outputs of this stage or a later one (or a finished run) were
    made with the stored values: then RunRecordError, so params.json always describes the run's outputs."""
    root = outputs_root()
    run = RunDir(root / run_name)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if start:
        cfg = resolve_config(profile or "tiny", {**overrides, "run_name": run_name}, has_gpu=has_gpu,
                             compute_capability=compute_capability)
        check_writable(root)
        if run.is_finished():
            if not overwrite:
                raise FileExistsError(f"Run {run_name!r} is finished (outputs/{run_name}/eval.json exists) and is "
                                      "never overwritten silently. Fix: choose a new run_name, or pass "
                                      "overwrite=True (runner: --overwrite) to archive the old run first.")
            archive_run(run)
        elif run.params.exists():
            stored = read_json(run.params)
            changed = {k: (stored.get(k), v) for k, v in cfg.to_dict().items() if stored.get(k) != v}
            if changed and not overwrite:
                raise FileExistsError(f"Run {run_name!r} already exists with other parameters {changed} "
                                      "(stored, new). Fix: choose a new run_name, or pass overwrite=True to "
                                      "archive it and start over.")
            if changed:
                archive_run(run)
        run.root.mkdir(parents=True, exist_ok=True)
        write_json(run.params, cfg.to_dict())
        return cfg, run

    stored = read_json(run.require(run.params, "notebook 01"))
    known = {f.name for f in fields(RunConfig)}
    merged = {k: v for k, v in stored.items() if k in known and k not in ("profile", "run_name")}
    for key, value in overrides.items():
        if key in merged and merged[key] != value:
            print(f"override: {key} = {value!r} (was {merged[key]!r})")
    cfg = resolve_config(stored["profile"], {**merged, **overrides, "run_name": run_name})
    changed = {k: (stored.get(k), v) for k, v in cfg.to_dict().items() if stored.get(k) != v}
    fix = (f"Fix: start a new run (a new run_name, from notebook 01), or rerun the series with the runner's "
           f"--overwrite, which archives outputs/{run_name}/ first.")
    if stage is not None:
        done = [s for s in run.done_stages() if s >= stage]
        if run.is_finished() and (changed or stage == "04"):
            raise RunRecordError(f"Run {run_name!r} is finished (eval.json exists); notebook {stage} would "
                                 f"{'change ' + _describe(changed) if changed else 'retrain its adapter'}. Its "
                                 f"outputs are kept as they are. {fix}")
        if changed and done:
            raise RunRecordError(f"Run {run_name!r}: notebook(s) {', '.join(done)} already produced outputs with "
                                 f"the stored parameters, and this notebook was given {_describe(changed)}. Nothing "
                                 f"was changed. {fix}")
        if stage == "04" and "04" in done:
            raise RunRecordError(f"Run {run_name!r}: training is complete (train_summary.json exists); running "
                                 f"notebook 04 again would overwrite its adapter and summary. Go on with notebook "
                                 f"05, or: {fix}")
    if cfg.to_dict() != stored:
        write_json(run.params, cfg.to_dict())
    return cfg, run


def _describe(changed: dict) -> str:
    return ", ".join(f"{k}={new!r} (stored: {old!r})" for k, (old, new) in changed.items())
