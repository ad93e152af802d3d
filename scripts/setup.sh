#!/usr/bin/env bash
# Installs what building and testing need, where it is missing. Safe to run again.
#   protoc       Debian's protobuf-compiler (tonic/prost code generation, etcd-client)
#   etcd         Debian's etcd-server (the cross-process tests start a real one)
#   .venv-test   a Python venv with grpcio and the Python client (clients/python), for the
#                cross-process test of the client; helm-python-sdk (Helm 4's SDK as a library:
#                no helm binary, offline) and kubernetes-validate, for the chart's test
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
command -v protoc >/dev/null 2>&1 || apt_pkgs+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || apt_pkgs+=(etcd-server)
# Debian splits ensurepip (which `python3 -m venv` needs) into python3-venv.
python3 -c "import ensurepip" >/dev/null 2>&1 || apt_pkgs+=(python3-venv)

if ((${#apt_pkgs[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${apt_pkgs[*]} (Debian packages)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi
# Debian starts etcd-server as a service on port 2379 when it installs it; the tests start
# their own on free ports, so it does no harm, but it need not run.
if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi

if ! .venv-test/bin/python -c "import grm_client, grpc" >/dev/null 2>&1; then
  echo "setup: creating .venv-test (grpcio, protobuf, clients/python)" >&2
  python3 -m venv .venv-test
  .venv-test/bin/pip install -q --upgrade pip
  .venv-test/bin/pip install -q ./clients/python
fi

# Pinned: the chart's test validates against the newest Kubernetes this kubernetes-validate ships.
helm_pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)
if ! .venv-test/bin/python - "${helm_pins[@]}" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import helm_python, kubernetes_validate  # noqa: F401  (importable, and the pinned versions)
sys.exit(any(version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
PY
then
  echo "setup: installing ${helm_pins[*]} into .venv-test" >&2
  .venv-test/bin/pip install -q "${helm_pins[@]}"
fi

# NVRTC 13.0 (pinned), only so that the tests can compile every CUDA kernel for sm_90 on a
# machine without a GPU; scripts/test.sh puts its lib directory on LD_LIBRARY_PATH.
if ! ls .venv-test/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13 >/dev/null 2>&1; then
  echo "setup: installing nvidia-cuda-nvrtc==13.0.88 into .venv-test" >&2
  .venv-test/bin/pip install -q nvidia-cuda-nvrtc==13.0.88
fi
