#!/usr/bin/env bash
# SPCT's online RL stage (training/rl.py) applied to the shipped GRM (models/grm, the RFT model
# of the first recipe), and its effect on the held-out splits: both models evaluated by
# `grm eval` with the same flags in the same run (greedy, voting@k, meta-RM@k with the shipped
# meta RM), written to models/eval/rl/ with the RFT-against-RL plots.
#   bash training/rl_shipped.sh            # ~37 min of RL + ~25 min of evaluation on 2 cores
# SKIP_RL=1 reuses training/out/grm-rl. GRM_BIN names a grm binary (default target/release/grm,
# built if missing); THREADS (2) the threads of torch and of grm.
source "$(dirname "$0")/env.sh"
out=models/eval/rl
mkdir -p "$out" training/out/eval
[ -n "${SKIP_RL:-}" ] || time "$py" training/rl.py --grm models/grm --threads "$threads"
# The RL model rounded to bf16 as the shipped one is, so the comparison is like for like.
"$py" - <<'PY'
import os, sys
sys.path.insert(0, "training")
from ship import ship
from transformers import Gemma2ForCausalLM
ship("training/out/grm-rl", "training/out/grm-rl-bf16", Gemma2ForCausalLM)
PY
# The flags of the shipped evaluation (models/README.md), for both models.
for tag in rft rl; do
  model=models/grm
  [ $tag = rl ] && model=training/out/grm-rl-bf16
  for split in best-of-n single; do
    time "$GRM_BIN" eval --input "models/eval/test-$split.jsonl" --model "$model" --meta-model models/meta-rm \
      --k-max 32 --ks 1,2,4,8,16,32 --max-new-tokens 96 --concurrency 64 --kv-blocks 30000 --max-batch-tokens 2048 \
      --threads "$threads" --out "$out/report-$split-$tag.json" \
      --judgements "training/out/eval/judgements-$split-$tag.jsonl"
  done
done
for split in best-of-n single; do
  "$py" training/plots.py rl-compare --rft "$out/report-$split-rft.json" --rl "$out/report-$split-rl.json" \
    --out "$out/rl-vs-rft-$split.svg"
done
