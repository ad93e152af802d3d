#!/usr/bin/env bash
# RLHF on the cluster's rewards, end to end on CPU: a small Gemma-2 policy (2.2 M parameters,
# pretrained here on the arithmetic domain's text) trained with TRL's GRPOTrainer, its rewards
# from a live `grm serve` (the embedded GRM and meta RM in models/) through
# grm_client.trl.GRMReward: groups of 4 completions, k = 8 judgements each, the meta RM keeping
# the best 4. Writes training/out/rlhf/ (the policies, every step's samples and rewards) and
# models/eval/rlhf/$NAME-report.json and $NAME.svg (the curves; NAME defaults to
# groups-of-$GENERATIONS).
# GRM_BIN names a grm binary (default: target/release/grm, built if missing); THREADS (1) the
# trainer's torch threads, GRM_THREADS (1) the server's; STEPS (100) GRPO steps; PORT (50151);
# GENERATIONS (4) completions per group, PROMPTS (8) groups per step, K (8) judgements per
# group, BETA (0.04) the KL penalty to the base policy; POLICY names a base policy to reuse
# instead of pretraining one (POLICY_EPOCHS, 8, of pretraining).
source "$(dirname "$0")/env.sh"
name=${NAME:-groups-of-${GENERATIONS:-4}}
out=${OUT:-training/out/rlhf/$name}
port=${PORT:-50151}
threads=${THREADS:-1}
mkdir -p "$out"
"$GRM_BIN" serve --listen "127.0.0.1:$port" --http-listen "" --threads "${GRM_THREADS:-1}" --kv-blocks 16384 \
  --max-batch-tokens 2048 > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
base=${POLICY:-$out/policy-base}
[ -n "${POLICY:-}" ] || time "$py" training/policy.py pretrain --out "$base" --threads "$threads" --epochs "${POLICY_EPOCHS:-8}"
time "$py" training/rlhf.py --addr "127.0.0.1:$port" --policy "$base" --out "$out" --threads "$threads" \
  --steps "${STEPS:-100}" --num-generations "${GENERATIONS:-4}" --prompts-per-step "${PROMPTS:-8}" --k "${K:-8}" \
  --beta "${BETA:-0.04}"
mkdir -p models/eval/rlhf
"$py" - "$out" "$name" <<'PY'
import json, sys
out = sys.argv[1]
rep = json.load(open(f"{out}/report.json"))
steps = [json.loads(l) for l in open(f"{out}/steps.jsonl") if l.strip()]
for r in steps:
    r.pop("samples", None)
rep["steps"] = steps
json.dump(rep, open(f"models/eval/rlhf/{sys.argv[2]}-report.json", "w"), indent=1)
PY
"$py" training/plots.py rlhf --steps "$out/steps.jsonl" --report "$out/report.json" --out "models/eval/rlhf/$name.svg"
