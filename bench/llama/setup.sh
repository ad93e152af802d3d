#!/usr/bin/env bash
# llama.cpp, the peer of `grm bench engine --peer llama.cpp`: built from the PyPI sdist of
# llama-cpp-python (its vendored llama.cpp) in CMake Release with native tuning
# (GGML_NATIVE: -march=native, so AVX-512, VNNI, AVX512_BF16 wherever this CPU has them), and a
# venv with what its own converter (convert_hf_to_gguf.py) imports. Everything lives under
# $GRM_LLAMA_DIR (default .venv-llama, gitignored): the venv, the sdist, the build.
#
#   bash bench/llama/setup.sh     install and build what is missing, then print the paths as JSON
#
# Only PyPI is needed. `--no-binary llama-cpp-python` (rather than `:all:`) keeps the sdist rule
# to llama-cpp-python itself, so pip takes its build backend as wheels instead of compiling
# cmake from source to read the metadata. PyPI's torch is the CUDA build (about 2.6 GB with its
# nvidia-* wheels); the converter only needs it to read tensors, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
dir=${GRM_LLAMA_DIR:-.venv-llama}
py=$dir/bin/python
jobs=${JOBS:-2}

if [ ! -x "$py" ]; then
  echo "setup-llama: creating $dir" >&2
  python3 -m venv "$dir"
fi
pip=("$py" -m pip install -q --disable-pip-version-check)
if ! "$py" -c 'import torch, numpy, sentencepiece, google.protobuf.runtime_version, transformers, yaml, tqdm, requests, cmake, ninja' 2>/dev/null; then
  echo "setup-llama: installing the converter's requirements into $dir (torch is about 2.6 GB the first time)" >&2
  # transformers as the sdist's requirements-convert_legacy_llama.txt pins it; protobuf >= 5.26
  # for sentencepiece's model proto (bench/llama/spm_tokenizer.py).
  "${pip[@]}" torch==2.11.0 transformers==4.57.6 numpy sentencepiece "protobuf>=5.26" safetensors \
    pyyaml tqdm requests cmake ninja
fi

src=$dir/src/llama_cpp_python-$version
llama=$src/vendor/llama.cpp
if [ ! -f "$llama/CMakeLists.txt" ]; then
  echo "setup-llama: pip download llama-cpp-python==$version (sdist)" >&2
  mkdir -p "$dir/src"
  "$py" -m pip download -q --disable-pip-version-check --no-binary llama-cpp-python --no-deps \
    "llama-cpp-python==$version" -d "$dir/src"
  tar xzf "$dir/src/llama_cpp_python-$version.tar.gz" -C "$dir/src"
fi

build=$dir/build-$version
if [ ! -x "$build/bin/llama-batched-bench" ] || [ ! -x "$build/bin/llama-bench" ]; then
  echo "setup-llama: building llama.cpp (Release, GGML_NATIVE=ON) in $build with $jobs jobs" >&2
  "$dir/bin/cmake" -S "$llama" -B "$build" -G Ninja -DCMAKE_MAKE_PROGRAM="$(realpath "$dir/bin/ninja")" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >"$dir/cmake-configure.log" 2>&1 ||
    { tail -30 "$dir/cmake-configure.log" >&2; exit 1; }
  "$dir/bin/cmake" --build "$build" --target llama-batched-bench llama-bench -j "$jobs" >"$dir/cmake-build.log" 2>&1 ||
    { tail -30 "$dir/cmake-build.log" >&2; exit 1; }
fi

"$py" - "$dir" "$llama" "$build" "$version" <<'PY'
import json, os, sys
d, llama, build, version = sys.argv[1:]
ab = os.path.abspath
print(json.dumps({
    "llama_cpp_python": version,
    "python": ab(os.path.join(d, "bin", "python")),
    "converter": ab(os.path.join(llama, "convert_hf_to_gguf.py")),
    "batched_bench": ab(os.path.join(build, "bin", "llama-batched-bench")),
    "bench": ab(os.path.join(build, "bin", "llama-bench")),
    "spm_tokenizer": ab(os.path.join("bench", "llama", "spm_tokenizer.py")),
}))
PY
