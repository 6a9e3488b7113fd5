#!/usr/bin/env bash
# Wheels for the peer benchmark's Unsloth environment (benchmarks/peer_benchmark.py), for Python 3.12 on the GPU
# box, into .whl_peer/ (git-ignored), small enough to travel beside .whl/ under the box's 64 MiB carry limit.
# Run from the project root after ../shared/tools/gpu-wheels.sh:   bash benchmarks/peer_wheels.sh
# Unsloth caps TRL and transformers below this project's pins (unsloth 2026.10.9: trl<=1.15.0, transformers<=5.17.0,
# datasets<5), so it gets its own environment: these wheels + bitsandbytes, peft, dill and multiprocess from .whl/
# (peer_benchmark.sh installs them into /tmp/site_peer), on the box's torch 2.11, accelerate and tokenizers.
# The unsloth wheel is slimmed: its `studio/` web UI (82 MB unpacked, 2,034 files) is not needed to train.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl_peer/' .git/info/exclude 2>/dev/null || echo '/.whl_peer/' >> .git/info/exclude
rm -rf .whl_peer && mkdir -p .whl_peer
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl_peer \
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 transformers==5.17.0 datasets==4.8.5 xformers==0.0.35 \
  torchao==0.18.0 cut_cross_entropy==25.1.1 msgspec==0.23.0 tyro==1.0.17 docstring-parser==0.18.0 \
  typeguard==4.6.1 shtab==1.13.0 nest-asyncio==1.6.0
whl=$(ls .whl_peer/unsloth-2026*.whl)
tmp=$(mktemp -d); (cd "$tmp" && python3 -m zipfile -e "$OLDPWD/$whl" . && rm -rf studio \
  && rm "$OLDPWD/$whl" && python3 -m zipfile -c "$OLDPWD/$whl" unsloth unsloth_cli unsloth-*.dist-info)
rm -rf "$tmp"
du -sh .whl_peer .whl 2>/dev/null
