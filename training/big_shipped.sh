#!/usr/bin/env bash
# The shipped GRM and meta RM (models/README.md, recipe step 7): the GRM shipped before them (RFT
# then SPCT's online RL, responses of 1, 2 and 4; taken from git at b165ddf) fine-tuned by
# training/bigsft.py on 120,000 fresh items of every count from 1 to 8 with its own correct
# judgements replayed (training/data/own-judgements-*.jsonl.gz, drawn by `grm spct rft`), then a
# meta RM trained on the new GRM's judgements (training/meta.py), then shipped and evaluated
# (training/ship.py).
#   bash training/big_shipped.sh                 # on CPU: see models/README.md for the time
#   DEVICE=cuda bash training/big_shipped.sh     # the shipped run's device (one H200)
# The shipped weights came from `DEVICE=cuda` on one H200 (training/gpu_bigsft.sh, the variant
# ext-hi; the meta RM's sampling on CPU, its training on the H200); on CPU the same plan runs in
# f32 instead of bf16 autocast, so it is the same recipe, not the same bits. MAX_STEPS (3997, the
# shipped run's), ITEMS (60000 per part) and META_ITEMS (1000) cut it for a quick try; NO_SHIP=1
# stops before models/ is written. GRM_BIN names a grm binary (default
# target/release/grm, built if missing); THREADS (2) the threads of torch and of grm.
source "$(dirname "$0")/env.sh"
items=${ITEMS:-60000}
out=${GRM_TRAIN_OUT:-$PWD/training/out}/big
mkdir -p "$out/init" "$out/tokenizer"
for f in config.json model.safetensors tokenizer.json; do
  git show "b165ddf:models/grm/$f" > "$out/init/$f"
done
cp "$out/init/tokenizer.json" "$out/tokenizer/tokenizer.json"
# The data in two parts with their own seeds, built side by side (one core each).
time {
  "$py" training/bigsft.py data --items "$items" --seed 101 --pair-repeat 8 --out "$out/data-a.npz" \
    --pairs training/data/own-judgements-n124.jsonl.gz training/data/own-judgements-n35678.jsonl.gz &
  a=$!
  "$py" training/bigsft.py data --items "$items" --seed 500101 --out "$out/data-b.npz" &
  b=$!
  wait $a $b
}
time "$py" training/bigsft.py train --data "$out/data-a.npz" "$out/data-b.npz" --init "$out/init" \
  --out "$out/grm.safetensors" --device "${DEVICE:-cpu}" --lr 1.5e-3 --epochs 5 --max-steps "${MAX_STEPS:-3997}" \
  --threads "$threads"
"$py" training/bigsft.py finish --weights "$out/grm.safetensors" --like "$out/init" --out "$out/grm"
time GRM_TRAIN_OUT=$out "$py" training/meta.py --grm "$out/grm" --items "${META_ITEMS:-1000}" --device "${DEVICE:-cpu}" \
  --threads "$threads"
[ -n "${NO_SHIP:-}" ] || time "$py" training/ship.py --grm "$out/grm" --meta "$out/meta-rm" --threads "$threads"
