# Sourced by the training scripts: the repository root, the trainers' Python ($py, set up by
# scripts/setup-trainers.sh), a grm binary ($GRM_BIN: target/release/grm, built if missing) and
# $threads (THREADS, default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${PYTHON:-.venv-trainers/bin/python}
bash scripts/setup-trainers.sh >/dev/null
if [ -z "${GRM_BIN:-}" ]; then
  [ -x target/release/grm ] || { bash scripts/setup.sh; cargo build --release --locked -p grm-cli; }
  GRM_BIN=$PWD/target/release/grm
fi
export GRM_BIN
threads=${THREADS:-2}
