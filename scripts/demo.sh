#!/usr/bin/env bash
# The README's main command: builds `grm` and shows the method on an example request.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p grm-cli
grm=target/release/grm
request='{"query": "What is 17 * 3?", "responses": ["51", "17 * 3 = 41"], "sampling": {"seed": 1}}'
echo "== the prompt sample 0 sees =="
echo "$request" | "$grm" judge prompt --sample 0
echo
echo "== a judgement, parsed =="
printf 'Specific Criteria: correctness (70%%), clarity (30%%).\nAnalysis: Response 1 is right; Response 2 miscalculates.\nScores: \\boxed{9, 2}\n' \
  | "$grm" judge parse --responses 2
