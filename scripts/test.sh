#!/usr/bin/env bash
# The whole test suite, from a fresh machine with Rust, Python 3 (with venv and pip), a
# C and a C++ compiler and valgrind (the C ABI's tests build C/C++ programs and run one
# under valgrind): installs onnxruntime (whose wheel ships libonnxruntime.so) and the onnx
# checker into .venv, and OpenVINO (whose wheel ships libopenvino_c.so and its CPU plugin),
# then runs every test with both engines required; then builds the Python
# package (python/, with maturin) into .venv and runs its tests, Ray's included.
set -euo pipefail
cd "$(dirname "$0")/.."

# Name everything missing before any build starts.
missing=()
command -v cargo >/dev/null || missing+=("cargo (Rust, https://rustup.rs)")
command -v python3 >/dev/null || missing+=("python3 (3.9 or newer)")
if command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=("python3's venv and pip modules (Debian: apt-get install python3-venv)")
fi
command -v "${CC:-cc}" >/dev/null || missing+=("a C compiler (${CC:-cc}; Debian: apt-get install gcc)")
command -v "${CXX:-c++}" >/dev/null || missing+=("a C++17 compiler (${CXX:-c++}; Debian: apt-get install g++)")
command -v valgrind >/dev/null || missing+=("valgrind (Debian: apt-get install valgrind)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: missing prerequisites:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

ORT_DYLIB_PATH="$PWD/$(ls -d .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
export ORT_DYLIB_PATH
OPENVINO_LIB_PATH="$PWD/$(ls -d .venv/lib/python3*/site-packages/openvino/libs | head -n 1)"
export OPENVINO_LIB_PATH
export FLOWAR_PYTHON="$PWD/.venv/bin/python"
# Never a weakened suite: no re-blessed references, no case filter, no stand-in binary, no
# shortened fuzzing, no probe override, no extra pytest options.
unset FLOWAR_BLESS FLOWAR_HOSTILE_ONLY FLOWAR_BIN FLOWAR_FUZZ_SECONDS FLOWAR_FUZZ_SEED \
  FLOWAR_VENV_PROBE PYTEST_ADDOPTS
export FLOWAR_REQUIRE_ORT=1
export FLOWAR_REQUIRE_OPENVINO=1
export FLOWAR_REQUIRE_ONNX_CHECKER=1
export FLOWAR_REQUIRE_VALGRIND=1

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace "$@"

# The Python package, as `pip install ./python` builds it (the dev profile shares the test
# build's compiled crates), then its tests against the CLI just built, on a local Ray cluster.
PATH="$PWD/.venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile dev" .venv/bin/python -m pip install \
  --quiet --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall ./python
# `cargo test --workspace` just built the CLI the tests compare against; building it
# alone (`-p flowar-cli`) would resolve features differently and rebuild half the tree.
FLOWAR_CLI="${CARGO_TARGET_DIR:-$PWD/target}/debug/flowar" FLOWAR_REQUIRE_RAY=1 .venv/bin/python -m pytest -q -p no:cacheprovider python/tests
