#!/usr/bin/env bash
# grm's CPU engine beside llama.cpp (native build from the PyPI sdist) on this machine: the
# small-100m shape in f32, then bf16 (DTYPES), 2 threads (THREADS), each dtype one
# `grm bench engine --peer llama.cpp` run (the roofline, prefill 512, decode batch 1 and 8, the
# GRM workload k = 8 shared and separate, then the same through llama.cpp), recorded as
# bench/results/cpu-<dtype>-vs-llama-cpp.json (OUT) with the machine and the CPU path.
#
#   cargo build --release -p grm-cli && bash bench/cpu_vs_llama.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grm=${GRM:-${CARGO_TARGET_DIR:-target}/release/grm}
threads=${THREADS:-2}
out=${OUT:-bench/results}
mkdir -p "$out"
# Build llama.cpp first, so that its minutes fall outside the measurements.
bash bench/llama/setup.sh >/dev/null
for dtype in ${DTYPES:-f32 bf16}; do
  "$grm" bench engine --dtype "$dtype" --threads "$threads" --decode-batches 1,8 \
    --skip tree --grm-reps "${GRM_REPS:-2}" --peer llama.cpp \
    --out "$out/cpu-$dtype-vs-llama-cpp.json" >/dev/null
done
