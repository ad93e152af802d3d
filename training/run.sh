#!/usr/bin/env bash
# Trains the embedded GRM and meta RM from scratch and ships them to models/. Seeded, and cut by
# step counts (not by time): the same versions of torch, transformers and TRL (the pinned
# .venv-trainers) give the same models on any machine. Every stage takes items of every n from 1
# to 8; its one run (76 min on 2 cores) was worse than the shipped model and was not shipped
# (models/README.md, "Groups of 8"). training/extend.py is the other attempt.
#   1. tokenizer.py  byte-level BPE trained on the domain (digits kept single)
#   2. sft.py        pretraining on the domain's text, then SFT on rule-made judgements of items
#                    with 1, 2, 4 and 8 responses
#   3. rft.py        rejective fine-tuning on the model's own correct judgements (grm spct rft,
#                    plain and hinted)
#   4. rl.py         SPCT's rule-based online RL: TRL's GRPOTrainer on the model's own
#                    judgements, +1/-1 by the SPCT rule (grm judge parse), KL penalty
#   5. meta.py       the meta RM, on the final GRM's judgements labelled by the SPCT rule
#   6. ship.py       bf16 copies to models/, the held-out test splits, grm eval with its plots;
#                    then the RFT model evaluated the same way (models/eval/compare/) and the
#                    RFT-against-RL plots
# FROM=rft (or rl, meta, ship, compare) starts at that stage, reusing training/out/.
# GRM_BIN names a grm binary to use instead of building target/release/grm; THREADS (2) the
# threads of torch and of grm.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv-trainers/bin/python}
bash scripts/setup-trainers.sh >/dev/null
if [ -z "${GRM_BIN:-}" ]; then
  bash scripts/setup.sh
  cargo build --release --locked -p grm-cli
  export GRM_BIN=$PWD/target/release/grm
fi
export GRM_BIN
threads=${THREADS:-2}
from=${FROM:-tokenizer}
stages=(tokenizer sft rft rl meta ship compare)
run=0
for s in "${stages[@]}"; do
  [ "$s" = "$from" ] && run=1
  [ $run = 1 ] || continue
  echo "== $s" >&2
  case $s in
    tokenizer) time "$py" training/tokenizer.py ;;
    sft) time "$py" training/sft.py --threads "$threads" --train-items 8000 --epochs 2 ;;
    rft) time "$py" training/rft.py --threads "$threads" ;;
    rl) time "$py" training/rl.py --threads "$threads" ;;
    meta) time "$py" training/meta.py --threads "$threads" ;;
    ship) time "$py" training/ship.py --threads "$threads" ;;
    compare)
      time "$py" training/ship.py --eval-only training/out/grm-rft --tag rft --threads "$threads"
      for split in best-of-n best-of-8; do
        "$py" training/plots.py rl-compare --rft "models/eval/compare/report-$split-rft.json" \
          --rl "models/eval/report-$split.json" --out "models/eval/rl-vs-rft-$split.svg"
      done ;;
  esac
done
