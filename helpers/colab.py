"""Notebook setup, called by every notebook's first cell: `setup(None)` locally, `setup(clone)` on Colab.

Locally it only quiets the libraries (plain-text output, no progress widgets). On Colab the first cell clones the
repo from its `REPO_URL` line, and `setup_colab(clone)` installs `requirements-colab.txt` into the running kernel.
`REPO_URL` is written only below and in each notebook's first cell, and set in all of them (and the README's badges)
by `python tools/set_repo_url.py https://github.com/<you>/<fork>`, never by hand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# The course's public GitHub URL, https://github.com/<owner>/<repo>; empty: the first cell refuses to clone on Colab.
REPO_URL = ""

# URLs nobody we know owns (whoever registered one would run code in every learner's Colab): never a clone source.
PLACEHOLDER_URLS = (
    "https://github.com/orpo-qlora-course/orpo-qlora-mistral",
)

GITHUB_URL = re.compile(r"https://github\.com/[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")

REQUIREMENTS = "requirements-colab.txt"
# Never installed on Colab: its own CUDA torch and the running kernel's Jupyter/test stack stay as they are.
NEVER_INSTALL = ("torch", "ipykernel", "jupyterlab", "jupyter", "notebook", "pytest", "nbval", "papermill")
QUIET_ENV = ("TRL_EXPERIMENTAL_SILENCE",            # ORPO lives in trl.experimental: we know
             "HF_DATASETS_DISABLE_PROGRESS_BARS",   # plain-text output instead of progress widgets
             "HF_HUB_DISABLE_PROGRESS_BARS")


def is_placeholder(url: str) -> bool:
    """True for a URL known to belong to nobody we trust (compared without case, trailing slash or `.git`)."""
    def norm(u):
        u = u.strip().rstrip("/").lower()
        return u[:-4] if u.endswith(".git") else u
    return norm(url) in {norm(p) for p in PLACEHOLDER_URLS}


def requirement_names(path: Path) -> list[str]:
    """The distribution names a requirements file installs (lower case; comments and options ignored)."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def _installed_version(name: str) -> str | None:
    import importlib.metadata
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def setup(clone: str | Path | None) -> None:
    """The first cell's call. None (not on Colab): nothing is installed; the libraries are quieted. A folder (Colab,
    the course's fresh clone): `setup_colab(clone)` installs the pins and moves into its notebooks/ first."""
    import warnings

    if clone is not None:
        setup_colab(clone)
    for name in QUIET_ENV:
        os.environ[name] = "1"
    warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: plain-text progress is fine


def setup_colab(repo_dir: str | Path) -> None:
    """Install the Colab requirements, cd into notebooks/, make `helpers` importable, quiet the libraries.
    A failed install stops the notebook here; torch stays at Colab's version. Nothing is restarted: if an installed
    library was already imported, you are told to restart the session yourself."""
    repo = Path(repo_dir).resolve()
    requirements = repo / REQUIREMENTS
    forbidden = sorted(set(requirement_names(requirements)) & set(NEVER_INSTALL))
    if forbidden:
        raise RuntimeError(f"{requirements} lists {forbidden}, which must never be installed on Colab. "
                           f"Fix: remove them from {REQUIREMENTS} (Colab ships its own).")
    torch_version = _installed_version("torch")
    imported = {name: _installed_version(name) for name in requirement_names(requirements)
                if name.replace("-", "_") in sys.modules}
    print(f"Installing {REQUIREMENTS} (torch stays at {torch_version or 'whatever is installed'}) ...")
    with tempfile.TemporaryDirectory(prefix="colab-setup-") as tmp:
        command = [sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements)]
        if torch_version:  # keep Colab's CUDA build: pip fails instead of downloading another torch
            (Path(tmp) / "constraints.txt").write_text(f"torch=={torch_version}\n")
            command += ["-c", str(Path(tmp) / "constraints.txt")]
        subprocess.run(command, check=True)
    stale = sorted(name for name, version in imported.items() if _installed_version(name) != version)
    if stale:  # the kernel still runs the old code of these; restarting is your call, never done behind your back
        print(f"Note: {stale} were already imported and have just changed version: restart the session "
              "(Runtime > Restart session) and run the notebook from the top.")
    os.chdir(repo / "notebooks")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    for name in QUIET_ENV:
        os.environ[name] = "1"
    print(f"Colab ready: working directory {Path.cwd()}, `helpers` importable from {repo}.")
