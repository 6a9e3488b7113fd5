"""The run directory `outputs/<run_name>/`: the only way notebooks hand data to each other (all notebooks). Every
notebook starts with `open_run(...)`; a finished run is never overwritten (overwrite=True archives it)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

from .profiles import ParameterError, RunConfig, resolve_config

REPO_ROOT = Path(__file__).resolve().parent.parent

# Each notebook after 01 is a stage; the file it writes LAST marks it done (so a kill mid-stage leaves it not done).
STAGE_DONE = {"02": "data_report.json", "03": "model_report.json", "04": "train_summary.json", "05": "eval.json"}
LOCK_ENV, _TOKEN = "ORPO_RUN_LOCK", os.urandom(8).hex()  # the lock holder's token: processes it starts inherit it
_held: dict[Path, tuple[int, Path, int | None]] = {}  # run root -> (lock descriptor, the stage's last file, its mtime)
if (_shell := getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()) is not None:  # a Jupyter kernel:
    _shell.events.register("post_run_cell", lambda _: _release_finished())  # 04's launched ranks write its last file


class RunRecordError(FileExistsError):
    """Running this notebook would make the run's record untrue (outputs made with other parameters)."""


class RunInUseError(FileExistsError):
    """Another process (a notebook's kernel, the runner) is writing this run."""


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
    lock = property(lambda self: self.root.with_name(f".{self.root.name}.lock"))  # beside the run: archiving keeps it

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
    _release_finished()


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def archive_run(run: RunDir) -> Path:
    """Move a run aside instead of deleting it (what overwrite=True does)."""
    target = run.root.rename(run.root.with_name(f"{run.root.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
    print(f"Archived the previous run to {target.name}/")
    return target


def hold_run(run: RunDir, stage: str) -> None:
    """Lock the run for `stage` or raise RunInUseError naming the holder; processes it started (kernels, launched ranks)
    inherit $ORPO_RUN_LOCK and pass. flock: freed when the holder dies; else after the stage's last file (below)."""
    marker = run.root / {"01": "environment.json", **STAGE_DONE}.get(stage, "-")
    try:  # the lock this process holds already, else the first write into the outputs folder (before any work)
        run.root.parent.mkdir(parents=True, exist_ok=True)
        fd = _held.pop(run.root, (None,))[0] or os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ParameterError(f"Cannot write to the output folder {run.root.parent}: {err.strerror}. Fix: set "
                             "ORPO_OUTPUTS_DIR to a writable folder, or fix the folder's permissions.") from None
    holder = {"pid": "?", "host": "?", "stage": "?", "since": "?", **json.loads(os.pread(fd, 4096, 0) or "{}")}
    who = f"pid {holder['pid']} on {holder['host']} (notebook {holder['stage']}, since {holder['since']})"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        if holder.get("token") == os.environ.get(LOCK_ENV, "-"):  # a process the holder started: the same writer
            return
        raise RunInUseError(f"Run {run.root.name!r} is in use by {who}. Fix: wait until it finishes; or stop it "
                            "(Ctrl-C in the terminal of `python -m runner`, or restart that notebook's kernel); or "
                            "use another run_name.") from None
    if holder.get("token", _TOKEN) != _TOKEN:
        print(f"Run {run.root.name!r}: taking over the lock of {who}, which ended without releasing it.")
    os.environ[LOCK_ENV] = _TOKEN
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "stage": stage, "token": _TOKEN,
                              "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    _held[run.root] = (fd, marker, marker.stat().st_mtime_ns if marker.exists() else None)


def release_run(run: RunDir) -> None:
    """Give the run's lock back, emptying its record (a process that dies leaves its record: a stale lock)."""
    fd = _held.pop(run.root, (None,))[0]
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)


def _release_finished() -> None:
    """Release each lock whose stage has written its last file since (after write_json, after each Jupyter cell)."""
    for root, (_, marker, stamp) in list(_held.items()):
        if marker.exists() and marker.stat().st_mtime_ns != stamp:
            release_run(RunDir(root))


EVALUATION_ADD_ONS = {"ifeval", "ifeval_limit", "ifeval_batch_size", "merge_adapter"}  # 05's optional sections


def open_run(run_name: str, profile: str | None = None, overrides: dict | None = None, *, start: bool = False,
             overwrite: bool = False, has_gpu: bool | None = None, compute_capability: tuple[int, int] | None = None,
             stage: str | None = None) -> tuple[RunConfig, RunDir]:
    """Open (start=True: create) a run; return its validated config and paths. start=True (notebook 01, the runner)
    writes params.json; an unfinished run re-opens only with the same parameters. Else (02-05, `stage` = the notebook):
    record non-None overrides; RunRecordError if outputs of this or a later stage (or 05) used the old ones."""
    run = RunDir(outputs_root() / run_name)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if start:
        cfg = resolve_config(profile or "tiny", {**overrides, "run_name": run_name}, has_gpu=has_gpu,
                             compute_capability=compute_capability)
        stored = read_json(run.params) if run.params.exists() and not run.is_finished() else {}
        default = RunConfig().to_dict()  # a field newer than the stored run counts as its default
        changed = {k: (stored.get(k, default[k]), v) for k, v in cfg.to_dict().items()
                   if stored and stored.get(k, default[k]) != v}
        if run.is_finished() and not overwrite:
            raise FileExistsError(f"Run {run_name!r} is finished (outputs/{run_name}/eval.json exists) and is "
                                  "never overwritten silently. Fix: choose a new run_name, or pass "
                                  "overwrite=True (runner: --overwrite) to archive the old run first.")
        if changed and not overwrite:
            raise FileExistsError(f"Run {run_name!r} already exists with other parameters {changed} (stored, new). "
                                  "Fix: choose a new run_name, or pass overwrite=True to archive it and start over.")
        hold_run(run, "01")  # before the archive: the run may be someone else's
        if run.is_finished() or changed:
            archive_run(run)
        run.root.mkdir(parents=True, exist_ok=True)
        write_json(run.params, cfg.to_dict())
        return cfg, run

    stored = read_json(run.require(run.params, "notebook 01"))
    merged = {k: v for k, v in stored.items() if k in {f.name for f in fields(RunConfig)} - {"profile", "run_name"}}
    for key, value in overrides.items():
        if key in merged and merged[key] != value:
            print(f"override: {key} = {value!r} (was {merged[key]!r})")
    cfg = resolve_config(stored["profile"], {**merged, **overrides, "run_name": run_name})
    changed = {k: (stored.get(k), v) for k, v in cfg.to_dict().items() if stored.get(k) != v}
    fix = (f"Fix: start a new run (a new run_name, from notebook 01), or rerun the series with the runner's "
           f"--overwrite, which archives outputs/{run_name}/ first.")
    if stage == "05" and changed and set(changed) <= EVALUATION_ADD_ONS:
        stage = None  # IFEval or the merges on a finished run: they add outputs, and params.json records them
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
    hold_run(run, stage or "01")
    if cfg.to_dict() != stored:
        write_json(run.params, cfg.to_dict())
    return cfg, run


def _describe(changed: dict) -> str:
    return ", ".join(f"{k}={new!r} (stored: {old!r})" for k, (old, new) in changed.items())
