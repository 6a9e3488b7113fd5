"""Notebook setup, called by every notebook's first cell: `setup(None)` locally (quiet libraries, plain-text
output), `setup(clone)` on Colab (installs requirements-colab.txt into the running kernel; see docs/)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from .environment import installed_version

REQUIREMENTS = "requirements-colab.txt"
# Never installed on Colab: its own CUDA torch and the running kernel's Jupyter/test stack stay as they are.
NEVER_INSTALL = ("torch", "ipykernel", "jupyterlab", "jupyter", "notebook", "pytest", "nbval", "papermill")
QUIET_ENV = ("TRL_EXPERIMENTAL_SILENCE",            # ORPO lives in trl.experimental: we know
             "HF_DATASETS_DISABLE_PROGRESS_BARS",   # plain-text output instead of progress widgets
             "HF_HUB_DISABLE_PROGRESS_BARS")


def requirement_names(path: Path) -> list[str]:
    """The distribution names a requirements file installs (lower case; comments and options ignored)."""
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    return [re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower().replace("_", "-")
            for line in lines if line and not line.startswith("-")]


def setup(clone: str | Path | None) -> None:
    """The first cell's call: `clone` is None locally (only quiets the libraries), the fresh clone on Colab."""
    if clone is not None:
        setup_colab(clone)
    for name in QUIET_ENV:
        os.environ[name] = "1"
    # Before CUDA starts: memory freed by batches of varying length is reused instead of fragmenting the cache
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # (your own setting wins)
    warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: plain-text progress is fine


def setup_colab(repo_dir: str | Path) -> None:
    """Install the Colab requirements, cd into notebooks/, make `helpers` importable, quiet the libraries. A failed
    install stops the notebook here; torch stays at Colab's version; a restart is asked for, never done."""
    repo = Path(repo_dir).resolve()
    requirements = repo / REQUIREMENTS
    forbidden = sorted(set(requirement_names(requirements)) & set(NEVER_INSTALL))
    if forbidden:
        raise RuntimeError(f"{requirements} lists {forbidden}, which must never be installed on Colab. "
                           f"Fix: remove them from {REQUIREMENTS} (Colab ships its own).")
    torch_version = installed_version("torch")
    imported = {name: installed_version(name) for name in requirement_names(requirements)
                if name.replace("-", "_") in sys.modules}
    print(f"Installing {REQUIREMENTS} (torch stays at {torch_version or 'whatever is installed'}) ...")
    with tempfile.TemporaryDirectory(prefix="colab-setup-") as tmp:
        command = [sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements)]
        if torch_version:  # keep Colab's CUDA build: pip fails instead of downloading another torch
            (Path(tmp) / "constraints.txt").write_text(f"torch=={torch_version}\n")
            command += ["-c", str(Path(tmp) / "constraints.txt")]
        subprocess.run(command, check=True)
    stale = sorted(name for name, version in imported.items() if installed_version(name) != version)
    if stale:  # the kernel still runs the old code of these; restarting is your call, never done behind your back
        print(f"Note: {stale} were already imported and have just changed version: restart the session "
              "(Runtime > Restart session) and run the notebook from the top.")
    os.chdir(repo / "notebooks")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    for name in QUIET_ENV:
        os.environ[name] = "1"
    print(f"Colab ready: working directory {Path.cwd()}, `helpers` importable from {repo}.")
