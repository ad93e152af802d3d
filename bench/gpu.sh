#!/usr/bin/env bash
# The GPU checks and figures of one run on a CUDA machine: every CUDA test (each kernel against
# its CPU reference, the whole model against transformers), then `grm bench engine` on random
# models of gemma-2-2b's, 9b's and 27b's shapes in bf16: the device's copy bandwidth and bf16
# product rate, prefill, decode at batch 1/8/32/128, and the GRM workload (P = 1024, k = 8 and
# 32, G = 256; one prompt shared or not, n = 2 and 4 responses with and without the prompt
# tree), with transformers (bf16, same GPU, same weights) on the 2b and 9b shapes: eager, and on
# 9b also compiled (a static cache and CUDA graphs); on 9b, prefill again with the f32
# attention kernel (GRM_CUDA_PREFILL=simt) beside the tensor-core one, and decode again launch
# by launch (GRM_CUDA_GRAPHS=0) beside the replayed graphs.
#   bash bench/gpu.sh OUT_DIR [GRM] [CUDA_TEST]
# GRM and CUDA_TEST: prebuilt binaries (`cargo build --release -p grm-cli`, and the test binary
# of `cargo test --release -p grm-engine --features cuda --test cuda --no-run`). GRM_SHAPES
# picks the shapes; models are written under GRM_MODELS (default: /dev/shm when it has room for
# the 54 GB of 27b, else /tmp), one at a time.
set -uo pipefail
out=${1:?an output directory}
grm=${2:-target/release/grm}
cuda_test=${3:-}
mkdir -p "$out"
source "$(dirname "$0")/build_path.sh"
link_build_path "$grm" grm-cli
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
export GRM_KERNEL_CACHE=${GRM_KERNEL_CACHE:-/tmp/grm-kernels}
if [ -n "$cuda_test" ]; then
  timeout 150 "$cuda_test" --test-threads 1 --nocapture > "$out/cuda-tests.txt" 2>&1
  echo "cuda tests: exit $?" | tee -a "$out/cuda-tests.txt"
  grep -E "^test .*(ok|FAILED)$|test result|panicked" "$out/cuda-tests.txt"
fi
models=${GRM_MODELS:-}
if [ -z "$models" ]; then
  room=$(df --output=avail -B1G /dev/shm 2>/dev/null | tail -n1 | tr -d ' ')
  if [ "${room:-0}" -ge 60 ]; then models=/dev/shm; else models=/tmp; fi
fi
py=$(command -v python3)
for shape in ${GRM_SHAPES:-gemma-2-2b gemma-2-9b gemma-2-27b}; do
  model=$models/grm-$shape
  start=$(date +%s)
  [ -d "$model" ] || "$grm" model init --shape "$shape" --out "$model" >/dev/null
  echo "$shape: written in $(( $(date +%s) - start )) s"
  # transformers on 27b would load its 54 GB a second time: the 2b and 9b runs show the ratio.
  # The compiled peer (issue 31's target is set against it on 9b) costs minutes of compiling:
  # on 9b only, to keep the whole script under ten minutes.
  peer=(--peer transformers --python "$py")
  [ "$shape" = gemma-2-9b ] && peer+=(--peer-modes eager,compiled)
  [ "$shape" = gemma-2-27b ] && peer=()
  timeout 400 "$grm" bench engine --device cuda:0 --model "$model" --prompt-tokens 1024 \
    --samples 8,32 --gen-tokens 256 --decode-batches 1,8,32,128 "${peer[@]}" \
    --out "$out/bench-$shape.json" 2> "$out/bench-$shape.log"
  echo "$shape bench: exit $?, $(( $(date +%s) - start )) s"
  grep -vE '^\s*$' "$out/bench-$shape.log" | grep -v "^writing" | tail -n 40
  # The prefill attention A/B (issue 31 item 2): the f32 CUDA-core kernel on the same model;
  # on 9b only (each run loads the model again; 27b's 54 GB would cost a minute each).
  if [ "$shape" = gemma-2-9b ]; then
    GRM_CUDA_PREFILL=simt timeout 120 "$grm" bench engine --device cuda:0 --model "$model" --prompt-tokens 1024 \
      --skip roofline,decode,grm,tree --out "$out/bench-$shape-prefill-simt.json" 2> "$out/bench-$shape-prefill-simt.log"
    echo "$shape prefill with the f32 kernel: exit $?"
    grep -i "prefill" "$out/bench-$shape-prefill-simt.log" | tail -n 5
    # The decode graphs A/B (item 1): the same decode launch by launch.
    GRM_CUDA_GRAPHS=0 timeout 120 "$grm" bench engine --device cuda:0 --model "$model" \
      --decode-batches 1,8,32,128 --skip roofline,prefill,grm,tree \
      --out "$out/bench-$shape-decode-eager.json" 2> "$out/bench-$shape-decode-eager.log"
    echo "$shape decode launch by launch: exit $?"
    grep -i "decode" "$out/bench-$shape-decode-eager.log" | tail -n 6
  fi
  # One large model at a time; the 2b one stays for bench/gpu_serve.sh.
  [ "$shape" = gemma-2-2b ] || rm -rf "$model"
done
