"""Colab setup: one trusted repo URL, written consistently, never a placeholder; a minimal, pinned Colab install.

Fast, CPU only, no network: git and pip are never run (subprocess.run is replaced wherever the code could call it).
"""

import ast
import json
import re
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from helpers import colab

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
TOOL = ROOT / "tools" / "set_repo_url.py"
QUIET = ("TRL_EXPERIMENTAL_SILENCE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
# Spelled out here as well, so that emptying PLACEHOLDER_URLS cannot silence the scan below.
KNOWN_PLACEHOLDER = "orpo-qlora-course/orpo-qlora-mistral"
COLAB_PINNED = ("transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers", "safetensors")


def first_code_cell(path: Path) -> str:
    return "".join(next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")["source"])


def repo_url_literals(text: str) -> list[str]:
    return [ast.literal_eval(m) for m in re.findall(r"^REPO_URL = (\S+)", text, re.M)]


def load_tool():
    from scripts import load_script
    return load_script(str(TOOL.relative_to(ROOT)))


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            found[name.strip().lower()] = version.strip()
    return found


# ---- the placeholder is never a source of code -----------------------------------------------------------------

def scanned_files():
    files = [ROOT / "README.md", *NOTEBOOKS, *sorted((ROOT / "helpers").rglob("*.py")),
             *sorted((ROOT / "tools").rglob("*.py")), *sorted(ROOT.glob("requirements*.txt")), ROOT / "tasks.sh",
             ROOT / "pyproject.toml", ROOT / "environment.yml"]
    return [f for f in files if f.exists()]


def test_placeholder_list_covers_the_known_placeholder():
    tool = load_tool()
    assert any(KNOWN_PLACEHOLDER in url for url in tool.PLACEHOLDER_URLS)
    assert tool.is_placeholder(f"https://github.com/{KNOWN_PLACEHOLDER}.git/")


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_placeholder_never_appears_as_a_clone_or_install_source(path):
    text = path.read_text()
    if path == TOOL:  # its PLACEHOLDER_URLS list is the one allowed mention
        text = re.sub(r"^PLACEHOLDER_URLS = \(.*?^\)", "", text, count=1, flags=re.S | re.M)
    owner_repos = {KNOWN_PLACEHOLDER} | {u.removeprefix("https://github.com/") for u in load_tool().PLACEHOLDER_URLS}
    for owner_repo in owner_repos:
        hits = text.lower().count(owner_repo.lower())
        assert hits == 0, f"{path.name} still points at the placeholder {owner_repo} ({hits} times)"


# ---- one URL, the same everywhere -------------------------------------------------------------------------------

def course_url() -> str:
    """The REPO_URL every notebook's first cell holds (the same in all: checked below)."""
    return repo_url_literals(first_code_cell(NOTEBOOKS[0]))[0]


def test_course_url_is_unset_or_a_trusted_github_url():
    tool = load_tool()
    assert course_url() == "" or tool.GITHUB_URL.fullmatch(course_url())
    assert not tool.is_placeholder(course_url())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_the_same_repo_url_line(path):
    assert repo_url_literals(first_code_cell(path)) == [course_url()], (
        f"{path.name}: the first cell's REPO_URL line must equal {NOTEBOOKS[0].name}'s "
        "(paste the shared setup cell; change the URL only with tools/set_repo_url.py)")


def test_readme_colab_links_follow_repo_url():
    readme = (ROOT / "README.md").read_text()
    linked = re.findall(r"colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/blob/", readme)
    if course_url():
        assert linked and set(linked) == {course_url().removeprefix("https://github.com/")}
    else:  # unset: no badge at all (it could only open someone else's repo); markers show where badges go
        assert not linked, f"README has Colab links to {sorted(set(linked))} while REPO_URL is unset"
        markers = re.findall(r"<!-- colab-badge: (notebooks/[\w.-]+\.ipynb) -->", readme)
        assert sorted(markers) == [f"notebooks/{p.name}" for p in NOTEBOOKS]


# ---- the first cell ---------------------------------------------------------------------------------------------

@pytest.fixture
def sandbox(monkeypatch):
    """Environment, sys.path, warnings filters and cwd restored after the cell runs; git/pip fail the test."""
    for name in QUIET:
        monkeypatch.setenv(name, "0")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(ROOT / "notebooks")  # where the notebooks run locally (papermill, nbval, Jupyter)

    def no_subprocess(*args, **kwargs):
        pytest.fail(f"the cell ran a command: {args}")
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    with warnings.catch_warnings():
        yield monkeypatch


def run_cell(source: str):
    exec(compile(source, "<first cell>", "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cell_locally_only_makes_helpers_importable_and_quiet(path, sandbox):
    assert len(first_code_cell(path).splitlines()) <= 5  # the fastbook pattern: one guarded call, short
    run_cell(first_code_cell(path))
    assert sys.path[0] == str(ROOT)
    assert all(__import__("os").environ[name] == "1" for name in QUIET)
    assert __import__("os").environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"  # before CUDA starts


@pytest.mark.parametrize("url", ["", "https://github.com/<you>/<fork>"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cell_on_colab_without_url_stops_before_git_or_pip(path, url, sandbox):
    sandbox.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    source = re.sub(r"^REPO_URL = \S+", f"REPO_URL = {url!r}", first_code_cell(path), count=1, flags=re.M)
    with pytest.raises(RuntimeError) as error:
        run_cell(source)
    message = str(error.value)
    assert "public URL is not set" in message and "REPO_URL" in message and "tools/set_repo_url.py" in message


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cell_on_colab_with_url_clones_once_then_calls_setup_colab(path, sandbox):
    sandbox.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    url = "https://github.com/someone/orpo-course-fork-test-only"
    calls = []
    sandbox.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    sandbox.setattr(colab, "setup_colab", lambda repo: calls.append(("setup_colab", repo)))
    source = re.sub(r"^REPO_URL = \S+", f"REPO_URL = {url!r}", first_code_cell(path), count=1, flags=re.M)
    run_cell(source)
    target = Path("/content/course")
    assert calls == [(["git", "clone", "--depth", "1", url, str(target)], {"check": True}), ("setup_colab", target)]


# ---- setup_colab ------------------------------------------------------------------------------------------------

@pytest.fixture
def fake_clone(tmp_path):
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "requirements-colab.txt", tmp_path / "requirements-colab.txt")
    return tmp_path


def test_setup_colab_installs_with_pip_check_true_and_prepares_the_kernel(fake_clone, sandbox, capsys):
    calls = []
    sandbox.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    colab.setup_colab(fake_clone)
    [(command, kwargs)] = calls
    assert command[:7] == [sys.executable, "-m", "pip", "install", "-q", "-r",
                           str(fake_clone.resolve() / "requirements-colab.txt")]
    assert kwargs == {"check": True}
    assert Path.cwd() == fake_clone.resolve() / "notebooks"
    assert str(fake_clone.resolve()) in sys.path
    assert all(__import__("os").environ[name] == "1" for name in QUIET)
    assert "requirements-colab.txt" in capsys.readouterr().out  # it says what it did


def test_setup_colab_a_failed_install_raises(fake_clone, sandbox):
    def failing(cmd, **kwargs):
        assert kwargs.get("check") is True
        raise subprocess.CalledProcessError(1, cmd)
    sandbox.setattr(subprocess, "run", failing)
    with pytest.raises(subprocess.CalledProcessError):
        colab.setup_colab(fake_clone)


def test_setup_colab_refuses_a_requirements_file_with_torch_or_the_jupyter_stack(fake_clone, sandbox):
    (fake_clone / "requirements-colab.txt").write_text("trl==1.0\ntorch>=2.4\n")
    with pytest.raises(RuntimeError, match="torch"):
        colab.setup_colab(fake_clone)  # subprocess.run is the sandbox's: any call fails the test


# ---- requirements-colab.txt -------------------------------------------------------------------------------------

def test_colab_pins_equal_requirements_txt():
    colab_pins, main_pins = pins(ROOT / "requirements-colab.txt"), pins(ROOT / "requirements.txt")
    gpu_pins = pins(ROOT / "requirements-gpu.txt")
    assert set(COLAB_PINNED) <= set(colab_pins)
    for name, version in colab_pins.items():
        source = main_pins if name in main_pins else gpu_pins
        assert version and version == source.get(name), f"{name}=={version} differs from {source.get(name)}"
    assert re.search(r"pins must equal requirements\.txt", (ROOT / "requirements-colab.txt").read_text(), re.I)


def test_colab_requirements_never_install_torch_or_jupyter_or_test_tools():
    names = set(colab.requirement_names(ROOT / "requirements-colab.txt"))
    assert not names & {"torch", "ipykernel", "jupyterlab", "pytest", "nbval", "papermill", "matplotlib"}
    assert not any(line.strip().startswith("-r") for line in (ROOT / "requirements-colab.txt").read_text().splitlines())


# ---- tools/set_repo_url.py --------------------------------------------------------------------------------------

@pytest.fixture
def copy(tmp_path):
    """The files the tool rewrites, copied: README and notebooks are being edited by others, never touched here."""
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    for path in NOTEBOOKS:
        shutil.copy(path, tmp_path / "notebooks" / path.name)
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def check_consistent(root: Path, url: str):
    for path in sorted((root / "notebooks").glob("0*.ipynb")):
        text = path.read_text()
        before = (ROOT / "notebooks" / path.name).read_text()
        assert repo_url_literals(first_code_cell(path)) == [url]
        assert text == json.dumps(json.loads(text), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        assert sum(a != b for a, b in zip(before.splitlines(), text.splitlines())) <= 1  # only the REPO_URL line
        assert len(before.splitlines()) == len(text.splitlines())
    readme = (root / "README.md").read_text()
    owner_repo = url.removeprefix("https://github.com/")
    linked = re.findall(r"colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/blob/[^/]+/(notebooks/[^)\s]+)",
                        readme)
    assert {o for o, _ in linked} == {owner_repo}
    assert {n for _, n in linked} == {f"notebooks/{p.name}" for p in NOTEBOOKS}
    assert "colab-badge: notebooks/" not in readme


def test_set_repo_url_cli_rewrites_every_place_on_a_copy(copy):
    url = "https://github.com/someone/orpo-fork"
    result = subprocess.run([sys.executable, str(TOOL), url + ".git", "--root", str(copy)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    check_consistent(copy, url)
    again = snapshot(copy)
    assert load_tool().main([url, "--root", str(copy)]) == 0 and snapshot(copy) == again  # idempotent


def test_set_repo_url_turns_unset_markers_into_badges(copy):
    readme = copy / "README.md"
    unset = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\(https://colab\.research\.google\.com/github/[^/]+/[^/]+/blob/"
                   r"[^/]+/(notebooks/[^)\s]+)\)", r"<!-- colab-badge: \1 -->", readme.read_text())
    unset = unset if "colab-badge:" in unset else unset + "".join(
        f"\n<!-- colab-badge: notebooks/{p.name} -->" for p in NOTEBOOKS)
    readme.write_text(unset)
    tool = load_tool()
    tool.set_repo_url("https://github.com/someone/orpo-fork", copy)
    check_consistent(copy, "https://github.com/someone/orpo-fork")


@pytest.mark.parametrize("url", [
    f"https://github.com/{KNOWN_PLACEHOLDER}",
    f"https://github.com/{KNOWN_PLACEHOLDER.upper()}.git",
    "https://github.com/orpo-qlora-course/orpo-qlora-mistral",
    "https://gitlab.com/someone/orpo-fork",
    "http://github.com/someone/orpo-fork",
    "https://github.com/someone",
    "https://github.com/someone/orpo-fork/tree/main",
    "https://github.com/<you>/<fork>",
    "git@github.com:someone/orpo-fork.git",
    "",
])
def test_set_repo_url_rejects_placeholders_and_non_github_urls(copy, url):
    before = snapshot(copy)
    tool = load_tool()
    with pytest.raises(tool.UrlError):
        tool.set_repo_url(url, copy)
    assert tool.main([url, "--root", str(copy)]) == 2
    assert snapshot(copy) == before  # nothing written
