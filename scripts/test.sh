#!/usr/bin/env bash
# The whole test suite, from a fresh machine with Rust and Python 3 (with pip):
# installs onnxruntime (whose wheel ships libonnxruntime.so) and the onnx checker into
# .venv, then runs every test with onnxruntime required.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

ORT_DYLIB_PATH="$PWD/$(ls -d .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
export ORT_DYLIB_PATH
export FLOWAR_PYTHON="$PWD/.venv/bin/python"
export FLOWAR_REQUIRE_ORT=1
export FLOWAR_REQUIRE_ONNX_CHECKER=1
export FLOWAR_REQUIRE_VALGRIND=1

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace "$@"
