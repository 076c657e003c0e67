#!/usr/bin/env bash
# GPU evidence for the CUDA and TensorRT providers, as one prepared run (issue #8):
#   1. fixture verify (both fixtures, float32 and float16 graphs) on cuda and tensorrt;
#   2. the S-preset bench at batch 1, 16 and 64, float32 and float16, on cuda and
#      tensorrt, twice: cold (empty TensorRT engine cache: the load time includes the
#      engine builds) and warm (the same cache: engines are loaded, not built).
# It installs nothing (GPU machines here have no network). It needs:
#   - nvidia-smi and a CUDA driver;
#   - onnxruntime-gpu: ORT_DYLIB_PATH, or python3's `onnxruntime` package with
#     libonnxruntime_providers_cuda.so beside its libonnxruntime.so;
#   - for tensorrt, TensorRT's libnvinfer on the loader path (pip's `tensorrt_libs`
#     folder beside onnxruntime is added to LD_LIBRARY_PATH when present);
#   - target/release/flowar, or a cargo that can build it offline.
# Usage: bench/gpu/check.sh [OUT_DIR]   (default: $OUT, else bench/results/gpu-<date>)
# Exit status: 0 all ran, 1 a verify or bench failed, 2 a prerequisite is missing.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-${OUT:-bench/results/gpu-$(date +%F)}}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/check.log") 2>&1

missing() { echo "MISSING: $*"; exit 2; }

echo "== machine"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || missing "nvidia-smi (no GPU or no driver)"

echo "== onnxruntime-gpu"
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ortdir=$(python3 -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))' 2>/dev/null) \
    || missing "onnxruntime-gpu: set ORT_DYLIB_PATH or pip install onnxruntime-gpu"
  ORT_DYLIB_PATH=$(ls "$ortdir"/capi/libonnxruntime.so.* 2>/dev/null | sort -V | tail -n 1)
fi
[ -f "${ORT_DYLIB_PATH:-}" ] || missing "libonnxruntime.so (ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-unset})"
capi=$(dirname "$ORT_DYLIB_PATH")
[ -f "$capi/libonnxruntime_providers_cuda.so" ] \
  || missing "$capi has no libonnxruntime_providers_cuda.so: that is the CPU wheel; pip install onnxruntime-gpu"
export ORT_DYLIB_PATH
trt_libs="$(dirname "$(dirname "$capi")")/tensorrt_libs"
if [ -d "$trt_libs" ]; then export LD_LIBRARY_PATH="$trt_libs:${LD_LIBRARY_PATH:-}"; fi
echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

echo "== flowar"
BIN=${FLOWAR_BIN:-target/release/flowar}
if [ ! -x "$BIN" ]; then
  cargo build --release --offline -p flowar-cli || missing "target/release/flowar (and cargo could not build it offline)"
fi
"$BIN" --version

# Engines are large: keep the cache out of OUT_DIR. A fresh folder makes the first pass cold.
CACHE=${FLOWAR_GPU_CACHE:-/tmp/flowar-gpu-check-cache}
rm -rf "$CACHE"
mkdir -p "$CACHE"
export FLOWAR_CACHE_DIR="$CACHE"
work=$(mktemp -d)
status=0

echo "== 1. fixture verify on cuda and tensorrt"
for fx in spatial cross; do
  for dtype in f32 f16; do
    m="$work/$fx-$dtype"
    "$BIN" convert --flowar "tests/fixtures/$fx/flowar.pth" --vae "tests/fixtures/$fx/vae.ckpt" \
      --dtype "$dtype" --out "$m" >/dev/null || { echo "convert $fx $dtype failed"; status=1; continue; }
    for p in cuda tensorrt; do
      echo "-- verify $fx $dtype on $p"
      # TensorRT's own fp16 kernels would blur the float32 comparison: off for f32 graphs.
      gpu=()
      if [ "$p" = tensorrt ] && [ "$dtype" = f32 ]; then gpu=(--gpu trt_fp16=false); fi
      "$BIN" verify --model "$m" --reference "tests/fixtures/$fx/expected.safetensors" \
        --provider "$p" "${gpu[@]}" || status=1
    done
  done
done

echo "== 2. S-preset bench, batch 1,16,64, cold then warm"
for dtype in f32 f16; do
  for pass in cold warm; do
    echo "-- bench S $dtype $pass"
    "$BIN" bench --preset s --dtype "$dtype" --cache-dir "$work" \
      --providers cuda,tensorrt --batch 1,16,64 --steps 25 --warmup 1 --runs 3 \
      --json "$OUT_DIR/bench-s-$dtype-$pass.json" --markdown "$work/bench-s-$dtype-$pass.md" \
      || status=1
    cat "$work/bench-s-$dtype-$pass.md" 2>/dev/null
  done
done
ls -la "$CACHE"/tensorrt/*/ 2>/dev/null | head -40
rm -rf "$work"
echo "== done, status $status"
exit $status
