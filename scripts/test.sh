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
# Nor any other variable that changes what a test does: test-only probes and fault
# injection, pytest plugins.
unset FLOWAR_OPENVINO_PROBE PYTEST_PLUGINS FLOWAR_TEST_PACK_PAUSE_BEFORE_RENAME FLOWAR_TEST_PARSE_ONLY
for v in $(compgen -e | grep '^FLOWAR_RAY_TEST_' || true); do unset "$v"; done
export FLOWAR_REQUIRE_ORT=1
export FLOWAR_REQUIRE_OPENVINO=1
export FLOWAR_REQUIRE_ONNX_CHECKER=1
export FLOWAR_REQUIRE_VALGRIND=1
# A CPU that computes bfloat16 (AVX512-BF16 or AMX) must run the bf16 path: there a bf16
# test that finds OpenVINO refusing bf16 fails instead of checking the refusal.
CPU_NAME="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
CPU_FLAGS="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16|amx_tile)$' | tr '\n' ' ' || true)"
unset FLOWAR_REQUIRE_BF16
if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
  export FLOWAR_REQUIRE_BF16=1
fi
# A fresh engine cache (OpenVINO's compiled blobs, TensorRT engines): what the suite covers
# must not depend on what earlier runs left in ~/.cache/flowar.
FLOWAR_CACHE_DIR="$(mktemp -d)"
export FLOWAR_CACHE_DIR
# The cache's default cap (2 GiB): a caller's FLOWAR_CACHE_MAX_BYTES would change what the
# OpenVINO loads do (a value that is not a size stops every one).
unset FLOWAR_CACHE_MAX_BYTES
# Every check that did not run, or ran in another mode, writes one line here
# (flowar_runtime::test_support::note_skip); the summary below prints them all.
FLOWAR_SKIP_LOG="$(mktemp)"
export FLOWAR_SKIP_LOG
summary() {
  local rc=$?
  echo
  echo "== scripts/test.sh on ${CPU_NAME} (${CPU_FLAGS:-no avx2/avx512/bf16/amx flags}); bf16 required: ${FLOWAR_REQUIRE_BF16:-no}"
  if [ -s "$FLOWAR_SKIP_LOG" ]; then
    echo "== NOT RUN or run in another mode ($(sort -u "$FLOWAR_SKIP_LOG" | wc -l) kinds):"
    sort "$FLOWAR_SKIP_LOG" | uniq -c | sed 's/^ */   /'
  else
    echo "== every Rust check ran as written (nothing skipped); Python skips, if any, are listed by pytest above"
  fi
  rm -rf "$FLOWAR_CACHE_DIR" "$FLOWAR_SKIP_LOG"
  exit $rc
}
trap summary EXIT

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace "$@"

# The Python package, as `pip install ./python` builds it (the dev profile shares the test
# build's compiled crates), then its tests against the CLI just built, on a local Ray cluster.
PATH="$PWD/.venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile dev" .venv/bin/python -m pip install \
  --quiet --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall ./python
# `cargo test --workspace` just built the CLI the tests compare against; building it
# alone (`-p flowar-cli`) would resolve features differently and rebuild half the tree.
FLOWAR_CLI="${CARGO_TARGET_DIR:-$PWD/target}/debug/flowar" FLOWAR_REQUIRE_RAY=1 .venv/bin/python -m pytest -q -rs -p no:cacheprovider python/tests
