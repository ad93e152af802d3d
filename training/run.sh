#!/usr/bin/env bash
# Trains the embedded GRM and meta RM from scratch and ships them to models/ (under an hour on
# a 2-core CPU). Seeded: the same versions of torch and transformers give the same models.
#   1. tokenizer.py  byte-level BPE trained on the domain (digits kept single)
#   2. sft.py        pretraining on the domain's text, then SFT on rule-made judgements
#   3. rft.py        rejective fine-tuning on the model's own correct judgements (grm spct rft)
#   4. meta.py       the meta RM, on the model's own judgements labelled by the SPCT rule
#   5. ship.py       bf16 copies to models/, the held-out test split, grm eval with its plot
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv-ref/bin/python}
[ -x "$py" ] || bash scripts/setup-python.sh
bash scripts/setup.sh
cargo build --release --locked -p grm-cli
export GRM_BIN=$PWD/target/release/grm
threads=${THREADS:-$(nproc)}
time "$py" training/tokenizer.py
time "$py" training/sft.py --threads "$threads" --train-items 8000 --epochs 2 --time-budget 1500
time "$py" training/rft.py --threads "$threads"
time "$py" training/meta.py --threads "$threads"
time "$py" training/ship.py
