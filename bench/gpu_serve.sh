#!/usr/bin/env bash
# `grm serve --device cuda:0` on a random-weight model of gemma-2-2b's shapes answers `grm score`
# (k = 8 judgements), then 16 requests at once; prints the answers' usage and timings. Then
# `grm bench cluster --device cuda:0`: a router and one GPU worker under a fixed load.
#   bash bench/gpu_serve.sh OUT_DIR [GRM]
set -uo pipefail
out=${1:?an output directory}
grm=${2:-target/release/grm}
mkdir -p "$out"
source "$(dirname "$0")/build_path.sh"
link_build_path "$grm" grm-cli
model=${GRM_MODELS:-/dev/shm}/grm-gemma-2-2b
[ -d "$model" ] || "$grm" model init --shape gemma-2-2b --out "$model" >/dev/null
"$grm" serve --device cuda:0 --model "$model" --listen 127.0.0.1:0 --http-listen "" \
  --max-new-tokens 128 > "$out/serve.ready" 2> "$out/serve.log" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 1 600); do [ -s "$out/serve.ready" ] && break; sleep 0.1; done
addr=$(sed -n 's/.*"grpc":"\([^"]*\)".*/\1/p' "$out/serve.ready")
echo "serving on $addr: $(cat "$out/serve.ready")"
score() {
  "$grm" score --addr "$addr" --k 8 --seed "$1" --json \
    --query "What is 17 * 3? Show the steps." --response "17 * 3 = 51." --response "17 * 3 = 41." \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"usage": d["usage"], "timings": d["timings"], "invalid": d["invalid_samples"]}))'
}
score 1 | tee "$out/score.json"
start=$(date +%s.%N)
clients=()
for i in $(seq 2 17); do score "$i" > "$out/score-$i.json" & clients+=($!); done
# The clients only: a bare `wait` would wait for the server too.
wait "${clients[@]}"
end=$(date +%s.%N)
python3 - "$out" "$start" "$end" <<'PY'
import json, glob, sys
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [json.load(open(f)) for f in glob.glob(f"{out}/score-*.json")]
gen = sum(r["usage"]["generated_tokens"] for r in rows)
print(json.dumps({"requests": len(rows), "seconds": end - start, "generated_tokens": gen,
                  "generated_tokens_per_s": gen / (end - start)}))
PY
grep -iE "error|panic" "$out/serve.log" | head -5
kill $server 2>/dev/null
wait $server 2>/dev/null
timeout 200 "$grm" bench cluster --device cuda:0 --model "$model" --workers 1 --requests 64 \
  --concurrency 16 --k 8 --responses 2 --max-new-tokens 128 --out "$out/cluster.json" \
  > /dev/null 2> "$out/cluster.log"
echo "bench cluster: exit $?"
grep -vE '^\s*$' "$out/cluster.log" | tail -n 5
