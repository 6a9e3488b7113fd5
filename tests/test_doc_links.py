"""Every relative link in the Markdown pages and the notebooks' text points at a file that exists, and every
#anchor at a heading of that page (GitHub's slugs), so moving a file or renaming a section cannot strand a reader."""

import json
import re

from tests.scripts import ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", flags=re.S)  # commands in code blocks are not links
SKIP = {".venv", "outputs", ".cache", ".git", ".pytest_cache", "node_modules"}


def markdown_of(path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", re.sub(r"[`*_]", "", heading.strip().lower())).replace(" ", "-")


def anchors(path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", FENCE.sub("", markdown_of(path)), flags=re.M)}


def pages():
    md = [p for p in ROOT.rglob("*.md") if not SKIP & set(p.relative_to(ROOT).parts)]
    return sorted(md) + sorted((ROOT / "notebooks").glob("*.ipynb"))


def broken_links(paths, root=ROOT) -> list[str]:
    bad = []
    for page in paths:
        for target in LINK.findall(FENCE.sub("", markdown_of(page))):
            if re.match(r"[a-z]+:", target):  # https:, mailto:, ...: not checked here (no network)
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            where = f"{page.relative_to(root)}: ({target})"
            if not dest.exists():
                bad.append(f"{where} points at a missing file")
            elif anchor and dest.suffix in (".md", ".ipynb") and anchor not in anchors(dest):
                bad.append(f"{where}: no heading with that anchor in {dest.name}")
    return bad


def test_every_relative_link_and_anchor_resolves():
    found = pages()
    assert len(found) > 10 and any(p.name == "README.md" for p in found)
    assert broken_links(found) == []


def test_the_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "README.md").write_text("# Top\n## A section\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text("# Probe\n[ok](#probe) [ok](../README.md#a-section) [gone](no_such_file.md) "
                    "[moved](../README.md#no-such-section)\n```bash\n[not a link](nowhere.md)\n```\n")
    bad = broken_links([page], root=tmp_path)
    assert len(bad) == 2 and "missing file" in bad[0] and "no heading" in bad[1]
