#!/usr/bin/env bash
# The GPU half of training/checked.py on one CUDA machine (the device gives minutes, not hours):
# the GRM in INIT fine-tuned on DATA (checked.py data, built beforehand on a machine with the grm
# binary) at two learning rates at once, 5e-4 and 1e-3 (the model is small: one process leaves
# most of the GPU idle), each plan cut to FIT_SECONDS (300), printing the --max-steps that reproduces it.
#   bash training/gpu_checked.sh OUT INIT DATA.npz
# INIT is checked.sh's training/out/checked/init, whose config gives every layer the whole
# context (checked.sh sets it), not models/grm.
# Then, with the grm binary: bigsft.py finish, meta.py --domain arith, ship.py (checked.sh's last
# steps) on the better of OUT/lr5e-4.safetensors and OUT/lr1e-3.safetensors.
set -uo pipefail
out=${1:?an output directory}
init=${2:?the GRM to fine-tune}
data=${3:?the data file of checked.py data}
mkdir -p "$out"
fit=${FIT_SECONDS:-300}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> "$out/gpu.txt"
train() {
  python3 training/checked.py train --data "$data" --init "$init" --out "$out/lr$1.safetensors" \
    --state "$out/state-$1.pt" --device cuda --lr "$1" --fit-seconds "$fit" > "$out/lr$1.log" 2>&1
}
train 5e-4 & p1=$!
train 1e-3 & p2=$!
wait $p1 $p2
rm -f "$out"/state-*.pt
tail -n 3 "$out"/*.log
