#!/usr/bin/env bash
# The README's main command: builds grm, serves the embedded GRM and meta RM (models/) on
# this machine, and scores an example: 8 judgements, each with its principles and critique,
# filtered by the meta RM and voted into rewards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p grm-cli
grm=target/release/grm
log=$(mktemp)
"$grm" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$log.ready" 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log" "$log.ready"' EXIT
for _ in $(seq 1 300); do
  [ -s "$log.ready" ] && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/.*"grpc":"\([^"]*\)".*/\1/p' "$log.ready")
echo "grm serve is listening on $addr (gRPC); scoring an example with k = 8:"
echo
time "$grm" score --addr "$addr" --k 8 --seed 7 --samples \
  --query "Lena has 14 stickers and gets 9 more. How many stickers does Lena have now?" \
  --response "14 - 9 = 5. The answer is 5." \
  --response "14 + 9 = 23. The answer is 23."
