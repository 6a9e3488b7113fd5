"""The committed notebooks: one `parameters` cell each, clean metadata, no machine paths or secrets."""

import json
import re
from pathlib import Path

import pytest

from helpers.chat import CHAT_TEMPLATE
from runner import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
PATHS = [ROOT / "notebooks" / f"{name}.ipynb" for name in NOTEBOOKS]
COMPARE = ROOT / "notebooks" / "06_compare_runs.ipynb"  # after the series: compares finished runs (runner/sweep.py)


def load(path):
    return json.loads(path.read_text())


def test_the_runner_and_the_folder_agree_on_the_notebooks():
    assert sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(p.name for p in [*PATHS, COMPARE])


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_exactly_one_parameters_cell_with_run_name(path):
    cells = [c for c in load(path)["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1
    assert re.search(r"^run_name: str = ", "".join(cells[0]["source"]), re.M)


@pytest.mark.parametrize("path", [*PATHS, COMPARE], ids=lambda p: p.name)
def test_papermill_reads_every_parameter(path):
    """`papermill --help-notebook` (a README command) lists each parameter; a line it cannot parse (an `=` inside
    the comment did that to notebook 04's num_processes) is silently missing from the help."""
    from papermill.translators import PythonTranslator

    cell = next(c for c in load(path)["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    assigned = re.findall(r"^(\w+)\s*(?::[^=]*)?=", source, re.M)
    assert [p.name for p in PythonTranslator.inspect({"source": source})] == assigned


@pytest.mark.parametrize("path", [*PATHS, COMPARE], ids=lambda p: p.name)
def test_committed_state_is_clean(path):
    text = path.read_text()
    nb = json.loads(text)
    assert "widgets" not in nb["metadata"] and "papermill" not in nb["metadata"]
    assert not re.search(r'"/(work|root|tmp|home|Users)/', text), "absolute path of a machine in the notebook"
    assert not re.search(r"hf_[A-Za-z0-9]{30,}", text), "token-like string in the notebook"
    for cell in nb["cells"]:
        assert "papermill" not in cell.get("metadata", {})
        assert "injected-parameters" not in cell.get("metadata", {}).get("tags", [])


def test_notebook_02_template_is_the_one_the_offline_default_is_pretrained_on():
    source = "".join("".join(c["source"]) for c in load(PATHS[1])["cells"] if c["cell_type"] == "code")
    block = re.search(r"CHAT_TEMPLATE = \((.*?)\n\)", source, re.S).group(1)
    namespace = {}
    exec(f"t = ({block})", namespace)
    assert namespace["t"] == CHAT_TEMPLATE


def test_readme_colab_badges_point_at_existing_notebooks():
    readme = (ROOT / "README.md").read_text()
    badges = re.findall(r"(?:colab\.research\.google\.com/github/[^/]+/[^/]+/blob/[^/]+/|<!-- colab-badge: )"
                        r"(notebooks/[^)\s]+\.ipynb)", readme)
    assert sorted(set(badges)) == sorted(f"notebooks/{p.name}" for p in [*PATHS, COMPARE])
