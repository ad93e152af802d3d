#!/usr/bin/env bash
# Regenerates the Python client's gRPC stubs from proto/ (needs grpcio-tools; see
# scripts/setup-python.sh). The stubs are committed, so installing the client needs no protoc.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv-ref/bin/python}
out=clients/python/grm_client
"$py" -m grpc_tools.protoc -I proto --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" proto/grm/v1/reward.proto
# Make the generated imports package-relative.
find "$out/grm" -name '*.py' -exec sed -i 's/^from grm\.v1 import/from grm_client.grm.v1 import/' {} +
touch "$out/grm/__init__.py" "$out/grm/v1/__init__.py"
