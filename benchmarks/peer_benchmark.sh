#!/usr/bin/env bash
# The peer benchmark on a bare GPU box (benchmarks/peer_benchmark.py says what each row is).
#   bash benchmarks/peer_benchmark.sh part1   # Unsloth, Unsloth with its fused preference loss, TRL's best, ours (~8 min)
#   bash benchmarks/peer_benchmark.sh part2   # ours without expandable segments, the seed recipe + scoring x3 (~7 min)
# Device tool: run(command="bash benchmarks/peer_benchmark.sh part1", carry=[".whl", ".whl_peer"], timeout_s=600),
# after `bash ../shared/tools/gpu-wheels.sh` and `bash benchmarks/peer_wheels.sh` here. Each row is its own process
# (its JSON in $OUT/peer_<row>.json, the log in $OUT/peer_<part>.log); a failed row is recorded and the next one runs.
# Then, here: python benchmarks/peer_benchmark.py combine <peer_part*.json> --out benchmarks/results/peer_benchmark.json
set -uo pipefail
cd "$(dirname "$0")/.."
part="${1:?usage: peer_benchmark.sh part1|part2}"
started=$(date +%s)
OUT="${OUT:-/tmp/peer_out}"; mkdir -p "$OUT"
exec > >(tee "$OUT/peer_$part.log") 2>&1
source benchmarks/device_wheels.sh || exit 2   # our environment: /tmp/site (+ the repo) on PYTHONPATH
ours_path="$PYTHONPATH"
if [ "$part" = part1 ]; then                   # Unsloth's environment: its own TRL / transformers / datasets
  peer_from_ours=$(ls .whl/bitsandbytes-*.whl .whl/peft-*.whl .whl/dill-*.whl .whl/multiprocess-*.whl)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_peer \
    .whl_peer/*.whl $peer_from_ours || { echo "installing .whl_peer failed"; exit 2; }
fi
echo "wheels ready after $(( $(date +%s) - started )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
W=/tmp/peer_benchmark
PYTHONPATH="$ours_path" python3 benchmarks/peer_benchmark.py build --work "$W" || exit 1

row() {  # row NAME SECONDS PYTHONPATH [extra args]: skipped if the call's 600 s would not hold it
  local name=$1 limit=$2 path=$3; shift 3
  local left=$(( 585 - ($(date +%s) - started) ))
  if [ "$left" -lt 60 ]; then echo "SKIPPED $name: ${left}s left in this call"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s, $(( $(date +%s) - started ))s into the call)"
  PYTHONPATH="$path" timeout -k 10 "$limit" python3 benchmarks/peer_benchmark.py row "$name" --work "$W" \
    --out "$OUT/peer_$name.json" "$@" || echo "row $name exited with $?"
}
case "$part" in
  part1)
    row unsloth 190 "/tmp/site_peer:$PWD"
    row trl_best 150 "$ours_path"
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True row ours 90 "$ours_path"
    row unsloth_fused 170 "/tmp/site_peer:$PWD" ;;
  part2)
    row seed 330 "$ours_path" --scoring-reps 3
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True row ours 90 "$ours_path"
    unset PYTORCH_CUDA_ALLOC_CONF
    row ours_noexp 90 "$ours_path" ;;
  *) echo "unknown part $part"; exit 2 ;;
esac
PYTHONPATH="$ours_path" python3 benchmarks/peer_benchmark.py combine "$OUT"/peer_*.json --out "$OUT/peer_$part.json"
echo "done after $(( $(date +%s) - started )) s"
