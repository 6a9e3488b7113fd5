"""Re-run the series on the offline default and commit-clean the executed notebooks back into notebooks/.

    .venv/bin/python tools/refresh_notebooks.py

The committed notebooks carry the outputs of this reference run (nbval re-executes them and compares the
cells marked NBVAL_CHECK_OUTPUT). Cleaning removes what must never be committed: papermill metadata, the
injected-parameters cell, stderr noise (warnings print absolute paths), widget state, execution timings.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def clean(nb):
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")}
    nb.metadata["language_info"] = {"name": "python"}
    cells = []
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            continue
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        cells.append(cell)
    nb.cells = cells
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    return nb


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import runner

    with tempfile.TemporaryDirectory(prefix="orpo-refresh-") as tmp:
        os.environ["ORPO_OUTPUTS_DIR"] = tmp
        if runner.main(["--run-name", "tiny-demo"]) != 0:
            return 1
        for name in runner.NOTEBOOKS:
            nb = clean(nbformat.read(Path(tmp) / "tiny-demo" / "notebooks" / f"{name}.ipynb", as_version=4))
            text = nbformat.writes(nb) + "\n"
            for secret_or_path in (tmp, str(ROOT)):
                if secret_or_path in text:
                    raise SystemExit(f"{name}: output contains the machine path {secret_or_path!r}; fix the cell")
            (ROOT / "notebooks" / f"{name}.ipynb").write_text(text)
            print(f"refreshed notebooks/{name}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
