#!/usr/bin/env bash
# Where a GPU step's time goes: `grm bench engine` on a random model of gemma-2-2b's shapes, once
# plainly and once with GRM_CUDA_PROFILE=1 (each operation synchronised and timed: host work plus
# GPU time, by kernel, cuBLAS call, allocation and copy).
#   bash bench/gpu_profile.sh OUT_DIR [GRM] [SHAPE]
set -uo pipefail
out=${1:?an output directory}
grm=${2:-target/release/grm}
shape=${3:-gemma-2-2b}
mkdir -p "$out"
models=${GRM_MODELS:-/dev/shm}
model=$models/grm-$shape
[ -d "$model" ] || "$grm" model init --shape "$shape" --out "$model" >/dev/null
common=(bench engine --device cuda:0 --model "$model" --prompt-tokens 1024 --gen-tokens 256)
timeout 200 "$grm" "${common[@]}" --samples 8 --decode-batches 1,8,32,128 --skip tree \
  --out "$out/bench-$shape.json" 2> "$out/bench-$shape.log"
echo "bench: exit $?"
grep -vE "^\s*$" "$out/bench-$shape.log" | tail -n 12
GRM_CUDA_PROFILE=1 timeout 200 "$grm" "${common[@]}" --samples 8 --decode-batches 1,32 \
  --skip roofline,tree --out "$out/profile-$shape.json" 2> "$out/profile-$shape.log"
echo "profile: exit $?"
grep -A17 "^profile of" "$out/profile-$shape.log"
