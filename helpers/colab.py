"""Colab setup, called by every notebook's first cell after it has cloned the course repo (Colab only).

A notebook opened from a Colab badge arrives alone, without `helpers` or the pinned libraries. Its first cell
clones the repo from its `REPO_URL` line and then calls `setup_colab(repo_dir)`, which installs
`requirements-colab.txt` into the running kernel and makes the notebook behave as it does locally.

`REPO_URL` below and the `REPO_URL = ...` line of each notebook's first cell are the only places the course's
URL is written (the README's Colab badges are derived from it). They stay empty until the course has a public
home that its maintainers own; a learner with a fork sets them in the fork. Never edit them by hand; run

    python tools/set_repo_url.py https://github.com/<you>/<fork>

which validates the URL and rewrites this file, the five notebooks and the README badges consistently
(tests/test_colab.py checks that they agree).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# The course's public GitHub URL, https://github.com/<owner>/<repo>. Empty = not set: the notebooks' first cell
# then refuses to clone anything on Colab. Set it with `python tools/set_repo_url.py https://github.com/<you>/<fork>`.
REPO_URL = ""

# URLs that appeared in earlier versions of this course but belong to nobody we know: whoever registers them
# would have every learner's Colab clone and install their code. tools/set_repo_url.py refuses them, and
# tests/test_colab.py fails if one appears anywhere else in the repo as a clone or install source.
PLACEHOLDER_URLS = (
    "https://github.com/orpo-qlora-course/orpo-qlora-mistral",
)

GITHUB_URL = re.compile(r"https://github\.com/[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")

REQUIREMENTS = "requirements-colab.txt"
# Never installed on Colab: Colab's own CUDA torch must stay (a reinstall is several GB and may not match its
# driver), and the Jupyter/test stack of the running kernel must not change underneath it.
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


def setup_colab(repo_dir: str | Path) -> None:
    """Install the Colab requirements, cd into notebooks/, make `helpers` importable, quiet the libraries.

    The install runs `python -m pip` with check=True, so a failed install stops the notebook here (a `!pip` line
    would only print the error and let the next cell fail obscurely). torch is pinned to the version Colab already
    has (a constraints file), so no dependency can replace it. Nothing is restarted: if a library this installs
    was already imported in this kernel, you are told to restart the session yourself.
    """
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
