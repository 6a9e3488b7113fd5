"""Set the course's public GitHub URL everywhere it is written, consistently, after checking it.

    python tools/set_repo_url.py https://github.com/<you>/<fork>
    python tools/set_repo_url.py https://github.com/<you>/<fork> --root /path/to/a/copy   # another checkout

The URL is what every notebook clones on Colab and what the README's "Open in Colab" badges open, so it must be
a repository whose owner you trust: the course's own public home, or your fork. This rewrites
  * notebooks/0*.ipynb        the `REPO_URL = "..."` line of each notebook's first code cell (nothing else;
                              the JSON is written back nbformat-style: indent=1, sorted keys, trailing newline)
  * README.md                 each Colab badge link (colab.research.google.com/github/<owner>/<repo>/...), and each
                              `<!-- colab-badge: notebooks/<file>.ipynb -->` marker (used while the URL is unset)
                              becomes a badge
All files are checked first and written only if every one of them can be rewritten. tests/test_colab.py checks
that they agree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# URLs nobody we know owns (whoever registered one would run code in every learner's Colab): never a clone source.
PLACEHOLDER_URLS = (
    "https://github.com/orpo-qlora-course/orpo-qlora-mistral",
)
GITHUB_URL = re.compile(r"https://github\.com/[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")


def is_placeholder(url: str) -> bool:
    """True for a URL known to belong to nobody we trust (compared without case, trailing slash or `.git`)."""
    def norm(u):
        u = u.strip().rstrip("/").lower()
        return u[:-4] if u.endswith(".git") else u
    return norm(url) in {norm(p) for p in PLACEHOLDER_URLS}


REPO_URL_LINE = re.compile(r'^(REPO_URL = )("[^"\n]*"|\'[^\'\n]*\')(.*)$', re.M)
BADGE_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/([^/\s)]+)/"
                        r"(notebooks/[\w.-]+\.ipynb)")
BADGE_MARKER = re.compile(r"<!-- colab-badge: (notebooks/[\w.-]+\.ipynb) -->")
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


class UrlError(ValueError):
    pass


def normalize(url: str) -> str:
    """https://github.com/<owner>/<repo>, checked; a trailing slash or `.git` is dropped."""
    url = url.strip().rstrip("/")
    if url.endswith(".git"):
        url = url[:-4]
    if not GITHUB_URL.fullmatch(url):
        raise UrlError(f"{url!r} is not a GitHub repository URL. Fix: pass https://github.com/<owner>/<repo>, "
                       "the public repository of this course (or your fork of it).")
    if is_placeholder(url):
        raise UrlError(f"{url!r} is a placeholder that nobody behind this course owns (tools/set_repo_url.py: "
                       "PLACEHOLDER_URLS); whoever registers it would run code in every learner's Colab. "
                       "Fix: pass the URL of a repository you control, e.g. your fork.")
    return url


def _set_line(text: str, url: str, where: str) -> str:
    matches = REPO_URL_LINE.findall(text)
    if len(matches) != 1:
        raise UrlError(f"{where}: expected exactly one `REPO_URL = \"...\"` line, found {len(matches)}")
    return REPO_URL_LINE.sub(lambda m: f"{m.group(1)}{json.dumps(url)}{m.group(3)}", text)


def rewrite_notebook(text: str, url: str, where: str) -> str:
    nb = json.loads(text)
    cell = next((c for c in nb["cells"] if c["cell_type"] == "code"), None)
    if cell is None:
        raise UrlError(f"{where}: no code cell")
    source = "".join(cell["source"])
    cell["source"] = _set_line(source, url, f"{where}, first code cell").splitlines(keepends=True)
    new = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    changed = [a for a, b in zip(text.splitlines(), new.splitlines()) if a != b]
    if len(text.splitlines()) != len(new.splitlines()) or len(changed) > 1:
        raise UrlError(f"{where}: rewriting would change more than the REPO_URL line (its JSON is not in nbformat's "
                       "layout); save it with Jupyter or nbformat first")
    return new


def badge(owner_repo: str, notebook: str, branch: str = "main") -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})](https://colab.research.google.com/github/{owner_repo}/blob/{branch}/{notebook})"


def rewrite_readme(text: str, url: str, notebooks: list[str]) -> str:
    owner_repo = url.removeprefix("https://github.com/")
    text = BADGE_LINK.sub(lambda m: f"https://colab.research.google.com/github/{owner_repo}/blob/{m.group(1)}/"
                                    f"{m.group(2)}", text)
    text = BADGE_MARKER.sub(lambda m: badge(owner_repo, m.group(1)), text)
    linked = {m.group(2) for m in BADGE_LINK.finditer(text)}
    missing = sorted(set(notebooks) - linked)
    if missing:
        raise UrlError(f"README.md: no Colab badge or `<!-- colab-badge: ... -->` marker for {missing}")
    return text


def set_repo_url(url: str, root: Path) -> list[Path]:
    """Rewrite every place under `root`; returns the files written. Nothing is written if any place fails."""
    url = normalize(url)
    notebooks = sorted((root / "notebooks").glob("0*.ipynb"))
    readme = root / "README.md"
    if not notebooks:
        raise UrlError(f"no notebooks/0*.ipynb under {root}")
    new = {}
    for path in notebooks:
        new[path] = rewrite_notebook(path.read_text(), url, f"notebooks/{path.name}")
    new[readme] = rewrite_readme(readme.read_text(), url, [f"notebooks/{p.name}" for p in notebooks])
    written = []
    for path, text in new.items():
        if path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="https://github.com/<owner>/<repo>: the course's public repository or your fork")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to rewrite (default: this one)")
    args = parser.parse_args(argv)
    try:
        written = set_repo_url(args.url, args.root.resolve())
    except UrlError as error:
        print(f"set_repo_url: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"updated {path.relative_to(args.root.resolve())}")
    print(f"REPO_URL = {normalize(args.url)!r} ({len(written)} file(s) changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
