#!/usr/bin/env bash
# The figures models/README.md gives for a checkpoint of the checking judge, in one command:
#   bash training/checked_eval.sh MODEL_DIR OUT [LIMIT]
# MODEL_DIR is a GRM directory (bigsft.py finish writes one from a checkpoint). Into OUT:
# digits.txt (digit_accuracy.py, teacher-forced, 150 items of the data's arith part), then the
# greedy judgement and voting@4 of `grm eval` on the first LIMIT (60) held-out pairs, on as many
# new in-distribution pairs (checked.py pairs, seed 424242) and the first domain's best-of-n
# split (greedy only), each with judged_parts.py's count of what its greedy judgements got
# right. 512 new tokens, the servers' default.
source "$(dirname "$0")/env.sh"
model=${1:?a GRM directory}
out=${2:?an output directory}
limit=${3:-60}
mkdir -p "$out"
data=${GRM_TRAIN_OUT:-$PWD/training/out}/checked/data.npz
if [ -f "$data" ]; then
  "$py" training/digit_accuracy.py --model "$model" --data "$data" --items 150 --arith-items "${ITEMS:-20000}" \
    --threads "$threads" > "$out/digits.txt"
fi
"$py" training/checked.py pairs --seed 424242 --n "$limit" --out "$out/indist-pairs.jsonl"
run() {  # name input k
  "$GRM_BIN" eval --model "$model" --input "$2" --k-max "$3" --ks "$( [ "$3" = 1 ] && echo 1 || echo "1,$3")" \
    --max-new-tokens 512 --limit "$limit" --threads "$threads" --out "$out/$1.json" \
    --judgements "$out/$1-j.jsonl" > "$out/$1.txt" 2>&1
  tail -n 3 "$out/$1.txt"
}
run heldout-pairs models/eval/test-checked-pairs.jsonl 4
"$py" training/judged_parts.py --items models/eval/test-checked-pairs.jsonl --judgements "$out/heldout-pairs-j.jsonl" | tee -a "$out/heldout-pairs.txt"
run indist-pairs "$out/indist-pairs.jsonl" 4
"$py" training/judged_parts.py --items "$out/indist-pairs.jsonl" --judgements "$out/indist-pairs-j.jsonl" | tee -a "$out/indist-pairs.txt"
run first-domain models/eval/test-best-of-n.jsonl 1
