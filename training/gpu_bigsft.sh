#!/usr/bin/env bash
# The GPU half of training/bigsft.py on one CUDA machine, as it ran once (models/README.md, "Groups
# of 8"): three trainings at once (the model is small, so one process leaves most of the GPU
# idle): the GRM in INIT fine-tuned at two learning rates (ext, ext-hi: the one shipped), and a
# model pretrained and fine-tuned from scratch; each fits its plan to FIT_SECONDS (330) and
# prints the --max-steps that reproduces it. The CUDA tests run beside them when their binary
# is given. training/big_shipped.sh reproduces the shipped variant alone.
#   bash training/gpu_bigsft.sh OUT INIT "DATA.npz ..." [CUDA_TEST]
set -uo pipefail
out=${1:?an output directory}
init=${2:?the GRM to fine-tune}
data=${3:?the data files of bigsft.py data}
cuda_test=${4:-}
mkdir -p "$out"
logs=$(mktemp -d)
fit=${FIT_SECONDS:-330}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$logs/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> "$logs/gpu.txt"
train() {
  python3 training/bigsft.py train --data $data --out "$out/$1.safetensors" --device cuda --epochs 5 \
    --fit-seconds "$fit" "${@:2}" > "$logs/$1.log" 2>&1
}
train ext --init "$init" --lr 5e-4 & p1=$!
train ext-hi --init "$init" --lr 1.5e-3 & p2=$!
train scratch --init scratch --lr 2e-3 & p3=$!
if [ -n "$cuda_test" ]; then
  source bench/build_path.sh
  link_build_path "$cuda_test" grm-engine
  GRM_KERNEL_CACHE=/tmp/grm-kernels timeout 240 "$cuda_test" --test-threads 1 > "$logs/cuda-tests.txt" 2>&1
  echo "cuda tests: exit $?" >> "$logs/cuda-tests.txt"
fi
wait $p1 $p2 $p3
tail -n 3 "$logs"/*.log
tar czf "$out/logs.tgz" -C "$logs" .
