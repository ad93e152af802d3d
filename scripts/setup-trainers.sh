#!/usr/bin/env bash
# The RLHF trainers whose own code the trainer tests drive against a live router, on CPU, in
# .venv-trainers: OpenRLHF 0.11.2 (its agent executor, without torch), TRL 1.16.0
# (GRPOTrainer) and verl 0.9.1 (its reward loop), with the Python client (clients/python).
# Pins: verl 0.9.1 wants transformers >=5.5.3,<5.11 (its [cpu] extra pins torch 2.11.0 and
# transformers 5.9.0) and tensordict <=0.10.0; trl 1.16.0 and openrlhf's wheel (cp311) want
# Python 3.11; openrlhf and verl go in with --no-deps (their declared deps - deepspeed,
# flash-attn, vllm, ... - are not needed for the parts the tests drive). ray and omegaconf are
# pinned to the verified set. PyPI's torch is the CUDA build (about 2.6 GB of wheels with the
# nvidia-* libraries it needs to import); it runs on CPU. TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu) takes torch from another index first, where reachable.
#
#   bash scripts/setup-trainers.sh           install what is missing, then check everything
#   bash scripts/setup-trainers.sh --check   check only; exit 1 with one line per missing piece
# PYTHON names the interpreter for a new venv (default: python3, else python3.11).
# Safe to run again: with everything in place it only checks (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

venv=.venv-trainers
py=$venv/bin/python
pins=(torch==2.11.0 transformers==5.9.0 trl==1.16.0 ray==2.60.0 omegaconf==2.4.0 tensordict==0.10.0)
unpinned=(codetiming aiohttp)
nodeps=(openrlhf==0.11.2 verl==0.9.1)
stamp=$venv/.grm-client.sha256

# The client's sources, hashed: a changed client is installed again.
client_hash() {
  find clients/python/pyproject.toml clients/python/grm_client -type f \( -name '*.py' -o -name '*.toml' -o -name '*.pyi' \) \
    -not -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

# Prints one line per missing piece (nothing when all is well); exit status 1 if any.
check_all() {
  if [ ! -x "$py" ]; then
    echo "$venv (bash scripts/setup-trainers.sh creates it: Python 3.11 with venv; Debian: python3-venv)"
    return 1
  fi
  local out rc=0
  out=$(VERL_USE_EXTERNAL_PLUGINS=none HF_HUB_OFFLINE=1 "$py" - "${pins[@]}" "${nodeps[@]}" 2>/dev/null <<'PY'
import importlib, importlib.util, os, sys
from importlib.metadata import version, PackageNotFoundError
bad = []
if sys.version_info[:2] != (3, 11):
    bad.append(f"Python 3.11 (openrlhf's wheel is cp311, trl 1.16 needs >= 3.11); the venv has {sys.version.split()[0]}")
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have is None or have.split("+")[0] != want:
        bad.append(f"{pin} (have {have})")
for mod in ("codetiming", "aiohttp", "grpc", "google.protobuf", "torch", "transformers", "trl", "ray", "omegaconf",
            "tensordict", "grm_client", "grm_client.aio", "verl.experimental.reward_loop.reward_loop"):
    try:
        importlib.import_module(mod)
    except Exception as e:
        bad.append(f"import {mod} fails: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
spec = importlib.util.find_spec("openrlhf")
if spec is None or not spec.submodule_search_locations or not os.path.exists(
        os.path.join(list(spec.submodule_search_locations)[0], "utils", "agent.py")):
    bad.append("openrlhf/utils/agent.py not found (pip install --no-deps openrlhf==0.11.2)")
print("\n".join(bad))
PY
) || { echo "$py does not run"; return 1; }
  [ -n "$out" ] && { echo "$out"; rc=1; }
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(client_hash)" ]; then
    echo "grm-client in $venv is not the working tree's clients/python (pip install ./clients/python)"
    rc=1
  fi
  return $rc
}

report() {
  local msg
  if msg=$(check_all); then
    return 0
  fi
  while IFS= read -r line; do
    [ -n "$line" ] && echo "setup-trainers: missing: $line" >&2
  done <<<"$msg"
  return 1
}

if ((check_only)); then
  report
  exit
fi

t0=$(date +%s)
msg=$(check_all) && { echo "setup-trainers: $venv is ready" >&2; exit 0; } || true

pick_python() {
  local c
  for c in "${PYTHON:-}" python3 python3.11; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

if [ ! -x "$py" ] || ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  base=$(pick_python) || {
    echo "setup-trainers: missing: a Python 3.11 with venv (set PYTHON=/path/to/python3.11; Debian: python3.11-venv)" >&2
    exit 1
  }
  echo "setup-trainers: creating $venv with $base" >&2
  "$base" -m venv --clear "$venv"
  "$py" -m pip install -q --disable-pip-version-check --upgrade pip
fi

# No pip cache (it would hold a second copy of the 2.6 GB of wheels) and pip's unpacking on the
# checkout's disk rather than in /tmp, which may be a small tmpfs: a CI run on a machine with
# little free disk failed here with ENOSPC.
tmp=$venv/.pip-tmp
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
pip=(env TMPDIR="$PWD/$tmp" "$py" -m pip install -q --disable-pip-version-check --no-cache-dir)
# Hashed before installing, so that a client edited meanwhile is seen as changed next time.
want_hash=$(client_hash)
# Everything that is not the client and not the client's stamp: install in one resolution,
# with the client, so that grpcio and protobuf (< 7, the stubs' major) are chosen once.
if grep -qv '^grm-client in ' <<<"$msg"; then
  # Torch with its nvidia-* libraries and the rest take 5.4 GiB installed, 6.3 GiB while
  # installing (measured): say so plainly rather than fail half-way through a wheel.
  need_kb=$((7 * 1024 * 1024))
  free_kb=$(df -Pk "$venv" | awk 'NR == 2 { print $4 }')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
    echo "setup-trainers: the disk under $venv has $((free_kb / 1024)) MiB free; installing torch and the trainers needs about $((need_kb / 1024)) MiB" >&2
    exit 1
  fi
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "setup-trainers: installing torch from $TORCH_INDEX_URL" >&2
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" "${pins[0]}"
  fi
  echo "setup-trainers: installing ${pins[*]} ${unpinned[*]} ./clients/python into $venv (about 2.6 GB of wheels the first time)" >&2
  "${pip[@]}" "${pins[@]}" "${unpinned[@]}" ./clients/python
  echo "setup-trainers: installing ${nodeps[*]} (--no-deps)" >&2
  "${pip[@]}" --no-deps "${nodeps[@]}"
  echo "$want_hash" >"$stamp"
elif [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(client_hash)" ]; then
  echo "setup-trainers: installing ./clients/python into $venv" >&2
  "${pip[@]}" ./clients/python
  echo "$want_hash" >"$stamp"
fi

report || { echo "setup-trainers: failed (see the lines above)" >&2; exit 1; }
echo "setup-trainers: $venv is ready ($(($(date +%s) - t0)) s)" >&2
