#!/usr/bin/env bash
# Multi-GPU scaling on a bare device box: installs the carried wheels (benchmarks/device_wheels.sh), then runs
# benchmarks/multi_gpu_scaling.py with "$@" (its docstring says what is measured). With $OUT set, the JSON is
# mirrored there.
#
# Device tool: run(command="bash benchmarks/multi_gpu_scaling.sh --processes 1,2 --steps 30",
#                  kind="nvidia-h100-x2", carry=[".whl"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
export GPU_CHECK_STARTED="${GPU_CHECK_STARTED:-$(date +%s)}"
source benchmarks/device_wheels.sh || exit 2  # carried wheels, Jupyter kernel, PYTHONPATH
python3 benchmarks/multi_gpu_scaling.py --deadline-s 560 ${OUT:+--mirror-dir "$OUT"} "$@" 2>&1 | tee ${OUT:+"$OUT/multi_gpu_scaling.log"}
exit "${PIPESTATUS[0]}"
