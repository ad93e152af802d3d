#!/usr/bin/env bash
# The checking judge (models/README.md, "A judge that checks"): the shipped GRM fine-tuned on
# arith.py's items (only the arithmetic tells right from wrong; judgements name each response's
# final answer, work the result out column by column and check the answers against it) with
# the first domain's mixed in, then a meta RM on its judgements, then shipped and evaluated on
# every split, the held-out checked-pairs and checked-groups among them (training/arith_heldout.py
# writes those; they are committed).
#   DEVICE=cuda bash training/checked.sh   # on a GPU, in one go
#   bash training/checked.sh               # on CPU: one piece of PIECE_SECONDS (6600) per run;
#                                          # exits 75 while the plan is unfinished: run it again
# This is the twelfth stage, and each stage starts from the weights of a stage before, whose
# state is committed: the first (arith.py at de80e44: 24 phrasings, the analysis alone naming
# each answer; 1,668 steps, training/resume/checked-stage1.pt) taught the column facts; the
# second (at 1de4006: composed questions, each answer named before the working; stopped at step
# 567 of 712, training/resume/checked-stage2.pt) taught the questions; the third (1c1a372:
# short responses quoted, stopped at step ~550 of 803) named answers worse than the second and
# was dropped; the fourth (459efe8: the second's format, new items, 241 steps at 1.5e-4,
# training/resume/checked-stage4.safetensors) sharpened the second; the fifth (arith.py's
# working with the operands' places named, "H2 T8 O7", and + operands' lengths still drawn
# apart as at 4d700fd; SEED 35, 32,000 items, 8,000 of the
# first domain, 14,000 drills, 499 steps at 3e-4, training/resume/checked-stage5.safetensors)
# learned that format; the sixth went on from the fifth on new items (SEED 36, cc4d32b) where b
# has a's number of digits half the time (14,000 items, 5,000 of the first domain, 6,000
# drills, 228 steps at 1.5e-4, training/resume/checked-stage6.safetensors); the seventh went
# on from the sixth on new items (SEED 37) whose responses are framed by an opener and a closer
# (arith.framed), so that a response's answer is its last number wherever the form puts it
# (17,000 items, 5,000 of the first domain, 6,000 drills, 274 steps at 2e-4,
# training/resume/checked-stage7.safetensors); the eighth went on from the seventh on new items
# (SEED 38) whose groups have, half the time, any number of right answers (arith.item's
# any_right), at 1.5e-4 (277 steps, training/resume/checked-stage8.safetensors); the ninth went
# on from the eighth on new items (SEED 39), the same recipe (276 steps,
# training/resume/checked-stage9.safetensors); the tenth went on from the ninth on new items
# (SEED 40), the same recipe with a fifth more items (326 steps,
# training/resume/checked-stage10.safetensors); the eleventh went on from the tenth on new items
# (SEED 41, arith.py at 93a60c9) whose questions vary more how they place and name their operands
# (more word-problem structures for each operation, × among them, asides between the numbers and
# the question, more phrases and orders, "12x6" unspaced), a third of them stories (20,000
# items, 6,000 of the first domain, 7,000 drills, 328 steps,
# training/resume/checked-stage11.safetensors); this one goes on from the eleventh on new items
# (SEED 42) where × is a third of the questions (12 more × word problems whose one-digit factor
# comes late, 9 more × phrases and orders, one-letter signs unspaced half the time), a form of
# working in chained sentences (arith.stepwise) and answers written against "=" ("Total=56").
# ITEMS (16000), OLD_ITEMS (5000) and DRILLS (5000) size the data, LR (1.5e-4) and EPOCHS (1)
# the plan, MAX_STEPS cuts it, NO_SHIP=1 stops before models/ is written. The state lives in
# $GRM_TRAIN_OUT/checked (training/out/checked); a piece that ends unfinished also writes it,
# in bf16, to training/resume/checked.pt, which is committed: a session's disk does not outlive
# it, and a fresh checkout's first piece starts from there (after a piece is stopped by hand:
# checked.py snapshot --state S --out that file).
source "$(dirname "$0")/env.sh"
out=${GRM_TRAIN_OUT:-$PWD/training/out}/checked
mkdir -p "$out/init" "$out/tokenizer"
cp models/grm/tokenizer.json "$out/tokenizer/tokenizer.json"
# The GRM it starts from: the shipped one's config and tokenizer with the last stage's weights,
# kept beside the state (a run in pieces must not start a piece from a model it shipped itself).
if [ ! -f "$out/init/model.safetensors" ]; then
  cp models/grm/config.json models/grm/tokenizer.json "$out/init/"
  cp training/resume/checked-stage11.safetensors "$out/init/model.safetensors"
fi
# Every layer sees the whole context (WINDOW, 1024 = max_position_embeddings; the shipped GRM's
# sliding layers see 64 tokens): a judgement copies operands and each response's answer from
# hundreds of tokens back. From step 1450 of the first stage; the state belongs to this config.
"$py" - "$out/init/config.json" "${WINDOW:-1024}" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["sliding_window"] = int(sys.argv[2])
json.dump(c, open(sys.argv[1], "w"), indent=2)
EOF
[ -f "$out/data.npz" ] || time "$py" training/checked.py data --items "${ITEMS:-16000}" --old-items "${OLD_ITEMS:-5000}" \
  --drills "${DRILLS:-5000}" --seed "${SEED:-42}" --out "$out/data.npz" --threads "$threads"
carried=training/resume/checked.pt
[ -f "$out/state.pt" ] || [ ! -f "$carried" ] || { echo "checked: resuming from $carried" >&2; cp "$carried" "$out/state.pt"; }
piece=()
[ "${DEVICE:-cpu}" = cpu ] && piece=(--piece-seconds "${PIECE_SECONDS:-6600}")
steps=()
[ -n "${MAX_STEPS:-}" ] && steps=(--max-steps "$MAX_STEPS")
rc=0
time "$py" training/checked.py train --data "$out/data.npz" --init "$out/init" --out "$out/grm.safetensors" \
  --state "$out/state.pt" --device "${DEVICE:-cpu}" --threads "$threads" --lr "${LR:-1.5e-4}" --epochs "${EPOCHS:-1}" \
  "${piece[@]}" "${steps[@]}" || rc=$?
if [ "$rc" = 75 ]; then
  "$py" training/checked.py snapshot --state "$out/state.pt" --out "$carried"
  exit 75
fi
[ "$rc" = 0 ] || exit "$rc"
"$py" training/bigsft.py finish --weights "$out/grm.safetensors" --like "$out/init" --out "$out/grm"
time GRM_TRAIN_OUT=$out "$py" training/meta.py --grm "$out/grm" --items "${META_ITEMS:-1000}" --device "${DEVICE:-cpu}" \
  --threads "$threads" --domain arith
[ -n "${NO_SHIP:-}" ] || time "$py" training/ship.py --grm "$out/grm" --meta "$out/meta-rm" --threads "$threads"
