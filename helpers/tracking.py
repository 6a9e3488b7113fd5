"""Optional experiment tracking (notebook 04, the runner): `-p report_to tensorboard` also writes the trainer's log
as TensorBoard event files; `metrics.jsonl` is written either way (docs/design-decisions.md, Experiment tracking)."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from .profiles import ParameterError

GROUP_ENV = "ORPO_TRACKING_GROUP"  # set by runner.sweep for its runs; inherited by kernels and launched processes
INSTALL = "pip install -r requirements-tracking.txt"


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def check_tracking(cfg) -> None:
    """Before anything expensive: `report_to tensorboard` needs the tensorboard package (an optional requirement)."""
    if cfg.report_to == "tensorboard" and not tensorboard_installed():
        raise ParameterError("Parameter `report_to` is 'tensorboard', but the tensorboard package is not installed. "
                             f"Fix: `{INSTALL}` (in the course's folder, into this environment; then restart the "
                             "kernel if you are in Jupyter), or set report_to to 'none' (`-p report_to none`): "
                             "metrics.jsonl is written either way.")


def tensorboard_dir(run_root: Path) -> Path:
    """outputs/tensorboard/<group>/<run_name>/: the group is $ORPO_TRACKING_GROUP (a sweep's base), else the run."""
    return run_root.parent / "tensorboard" / (os.environ.get(GROUP_ENV) or run_root.name) / run_root.name


def start_tensorboard(run) -> Path:
    """Point transformers' TensorBoard callback at the run's folder (`run`: a RunDir; call before building the trainer);
    a run that trains from step 0 first moves an earlier folder aside (rank 0 only): two attempts, two curves."""
    folder = tensorboard_dir(run.root)
    resuming = any(run.checkpoints.glob("checkpoint-*"))
    if not resuming and int(os.environ.get("RANK", 0)) == 0 and folder.exists() and any(folder.iterdir()):
        folder.rename(folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    return folder
