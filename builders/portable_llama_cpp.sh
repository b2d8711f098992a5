#!/usr/bin/env bash
# Make the installed llama-cpp-python the kernel set every cache is built and replayed with: the
# x86-64-v3 baseline without native tuning or weight repacking (PORTABLE_CMAKE_ARGS in
# dersim/builder/backends/llama_cpp.py). Does nothing when it already is; otherwise (a wheel built
# for this CPU, e.g. cached by pip before) rebuilds it from source, about 7 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
check='from dersim.builder.backends.llama_cpp import kernel_fingerprint as f; raise SystemExit(0 if f()["portable"] else 1)'
if python -c "$check"; then
  exit 0
fi
echo "llama-cpp-python is built for this CPU's own instruction set; rebuilding it portable (about 7 minutes)" >&2
pip cache remove llama_cpp_python >/dev/null 2>&1 || true
CMAKE_ARGS="$(python -c 'from dersim.builder.backends.llama_cpp import PORTABLE_CMAKE_ARGS; print(PORTABLE_CMAKE_ARGS)')" \
  pip install -c constraints.txt --force-reinstall --no-deps llama-cpp-python
python -c "$check"
