#!/usr/bin/env bash
# A Python environment with torch and transformers in .venv-ref, for regenerating the test
# fixtures (scripts/fixtures/) and for `grm bench engine --peer transformers`. The tests do not
# need it: the fixtures are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-ref
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch transformers safetensors numpy tokenizers
"$venv/bin/python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
