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

source benchmarks/device_wheels.sh || exit 2  # carried wheels, Jupyter kernel, PYTHONPATH
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
