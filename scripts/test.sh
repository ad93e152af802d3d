#!/usr/bin/env bash
# The test command of the README: sets up what is missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The RLHF trainers (OpenRLHF, TRL, verl) whose own code tests/trainers.rs drives.
bash scripts/setup-trainers.sh
# NVRTC from pip, for the kernel compile test (crates/grm-engine/tests/cuda.rs), which must
# then run, not skip.
nvrtc_dir=$(echo "$PWD"/.venv-test/lib/python3*/site-packages/nvidia/cu13/lib)
export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GRM_REQUIRE_NVRTC=1
cargo test --workspace --locked "$@"
