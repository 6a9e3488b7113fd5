#!/usr/bin/env bash
# The GPU end-to-end check on a bare device box: installs the carried wheels, then runs
# benchmarks/gpu_series_check.py (its docstring says what the check proves) with "$@".
#
#   bash benchmarks/gpu_series_check.sh                      # build + profiles h100 (killed and resumed) and t4
#   bash benchmarks/gpu_series_check.sh --profiles t4        # one profile per call, if both don't fit 10 minutes
#   bash benchmarks/gpu_series_check.sh --build-only         # model, tokenizer and data only (~1 minute)
#
# Device tool: run(command="bash benchmarks/gpu_series_check.sh", carry=[".whl"], timeout_s=600), after
# `bash ../shared/tools/gpu-wheels.sh` has filled .whl/ here. With $OUT set, the log (gpu_series_check.log) and
# the result JSON (gpu_series_check.json, rewritten after every step) are written into $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export GPU_CHECK_STARTED="${GPU_CHECK_STARTED:-$(date +%s)}"  # the script's --deadline-s counts from here

# The carried wheels, installed exactly as ../shared/tools/gpu-wheels.sh says (skipped when this warm machine
# already has the same ones).
if compgen -G ".whl/*.whl" >/dev/null; then
  stamp=$(ls -l .whl/*.whl | sha256sum | cut -c1-16)
  if [ "$(cat /tmp/site/.gpu-check-wheels 2>/dev/null)" != "$stamp" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "gpu_series_check.sh: installing .whl/ failed" >&2; exit 2; }
    echo "$stamp" > /tmp/site/.gpu-check-wheels
  fi
  export PYTHONPATH=/tmp/site
  python3 -m ipykernel install --user --name python3 >/dev/null \
    || { echo "gpu_series_check.sh: installing the python3 Jupyter kernel failed" >&2; exit 2; }
else
  echo "gpu_series_check.sh: no .whl/ here: using the installed packages"
fi
# The repo's helpers for the runner and this script (the notebooks add the repo root themselves).
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
echo "wheels ready after $(( $(date +%s) - GPU_CHECK_STARTED )) s"

# --deadline-s 570: nothing new starts, and a running step is stopped, so that the result is written before the
# device tool's 600 s limit; the arguments given here come later and so win.
args=(--deadline-s 570 --reuse-build)
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  args+=(--mirror-dir "$OUT")
fi
python3 benchmarks/gpu_series_check.py "${args[@]}" "$@" 2>&1 | tee ${OUT:+"$OUT/gpu_series_check.log"}
rc=${PIPESTATUS[0]}
exit "$rc"
