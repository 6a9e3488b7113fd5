#!/usr/bin/env bash
# Multi-GPU scaling on a bare device box: installs the carried wheels (as gpu_series_check.sh does), then runs
# benchmarks/multi_gpu_scaling.py with "$@" (its docstring says what is measured). With $OUT set, the JSON is
# mirrored there.
#
# Device tool: run(command="bash benchmarks/multi_gpu_scaling.sh --processes 1,2 --steps 30",
#                  kind="nvidia-h100-x2", carry=[".whl"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
export GPU_CHECK_STARTED="${GPU_CHECK_STARTED:-$(date +%s)}"
if compgen -G ".whl/*.whl" >/dev/null; then
  stamp=$(ls -l .whl/*.whl | sha256sum | cut -c1-16)
  if [ "$(cat /tmp/site/.gpu-check-wheels 2>/dev/null)" != "$stamp" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "multi_gpu_scaling.sh: installing .whl/ failed" >&2; exit 2; }
    echo "$stamp" > /tmp/site/.gpu-check-wheels
  fi
  export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
  python3 -m ipykernel install --user --name python3 >/dev/null || exit 2
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
python3 benchmarks/multi_gpu_scaling.py --deadline-s 560 ${OUT:+--mirror-dir "$OUT"} "$@" 2>&1 | tee ${OUT:+"$OUT/multi_gpu_scaling.log"}
exit "${PIPESTATUS[0]}"
