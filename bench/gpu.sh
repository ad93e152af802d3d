#!/usr/bin/env bash
# The GPU checks and figures of one run on a CUDA machine: every CUDA test (each kernel against
# its CPU reference, the whole model against transformers), then `grm bench engine` on a
# random-weight model of gemma-2-2b's shapes with transformers (bf16, same GPU) beside it.
#   bash bench/gpu.sh OUT_DIR [GRM] [CUDA_TEST]
# GRM and CUDA_TEST: prebuilt binaries (`cargo build --release -p grm-cli`, and the test binary
# of `cargo test --release -p grm-engine --features cuda --test cuda --no-run`).
set -uo pipefail
out=${1:?an output directory}
grm=${2:-target/release/grm}
cuda_test=${3:-}
mkdir -p "$out"
# Binaries built elsewhere find the repository's files by the path they were built at.
built_at=$(grep -aoE '/[A-Za-z0-9._/-]+/crates/grm-cli' "$grm" | head -n1 | sed 's|/crates/grm-cli$||')
if [ -n "$built_at" ] && [ ! -e "$built_at" ]; then
  mkdir -p "$(dirname "$built_at")" && ln -s "$PWD" "$built_at"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
export GRM_KERNEL_CACHE=${GRM_KERNEL_CACHE:-/tmp/grm-kernels}
if [ -n "$cuda_test" ]; then
  timeout 150 "$cuda_test" --test-threads 1 --nocapture > "$out/cuda-tests.txt" 2>&1
  echo "cuda tests: exit $?" | tee -a "$out/cuda-tests.txt"
  grep -E "^test |test result" "$out/cuda-tests.txt"
fi
py=$(command -v python3)
timeout 300 "$grm" bench engine --device cuda:0 --shape gemma-2-2b --dtype bf16 \
  --prompt-tokens 1024 --samples 8 --gen-tokens 256 --decode-batches 1,8,32,128 \
  --peer transformers --python "$py" --out "$out/bench-gemma-2-2b.json" 2> "$out/bench-gemma-2-2b.log"
echo "bench: exit $?"
tail -n 30 "$out/bench-gemma-2-2b.log"
