//! Pipeline options, set by name so that new options never change the ABI.

use std::ffi::c_char;

use flowar_runtime::backend::{gpu, BackendOptions};
use flowar_runtime::{Error, PipelineOptions};

use crate::{bad, c_str, guard, out_handle, put, FlowarStatus, Value};

/// How to load a pipeline. Create with `flowar_options_create`, set with
/// `flowar_options_set` / `flowar_options_set_int`, free with `flowar_options_destroy`.
pub struct FlowarOptions {
    pub(crate) inner: PipelineOptions,
}

impl FlowarOptions {
    fn set(&mut self, name: &str, value: Value) -> Result<(), Error> {
        match name {
            "provider" => self.inner.provider = value.str(name)?.parse()?,
            "threads" => {
                self.inner.backend.threads = match value {
                    Value::Str("auto") => None,
                    v => match v.uint(name)? {
                        0 => None,
                        n => Some(usize::try_from(n).map_err(|_| bad("`threads` is too large"))?),
                    },
                }
            }
            "device_id" => {
                let id = value.int(name)?;
                self.inner.backend.device_id = i32::try_from(id)
                    .ok()
                    .filter(|&d| d >= 0)
                    .ok_or_else(|| bad(format!("`device_id` must be within 0..2^31, got {id}")))?;
            }
            "ort_lib" => {
                let path = value.str(name)?;
                self.inner.backend.ort_lib = (!path.is_empty()).then(|| path.into());
            }
            "openvino_lib" => {
                let path = value.str(name)?;
                self.inner.backend.openvino_lib = (!path.is_empty()).then(|| path.into());
            }
            n if gpu::GPU_OPTION_NAMES.contains(&n) => {
                let text = match value {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    Value::Float(f) => f.to_string(),
                };
                self.inner.backend.gpu.set(n, &text)?
            }
            _ => {
                return Err(bad(format!(
                    "unknown option `{name}` (known: provider, threads, device_id, ort_lib, openvino_lib, {})",
                    gpu::GPU_OPTION_NAMES.join(", ")
                )))
            }
        }
        Ok(())
    }
}

/// Creates options with the defaults: provider "auto", threads = all cores, device 0,
/// onnxruntime found by the documented search. `*out` is NULL on error.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_options_create(out: *mut *mut FlowarOptions) -> *mut FlowarStatus {
    guard("flowar_options_create", || {
        // SAFETY: `out` is NULL or valid for a write (the caller's contract).
        unsafe { out_handle(out, "out") }?;
        let options = FlowarOptions {
            inner: PipelineOptions {
                provider: Default::default(),
                backend: BackendOptions::default(),
            },
        };
        // SAFETY: `out_handle` rejected NULL, so `out` is valid for a write (the contract).
        unsafe { put(out, options) };
        Ok(())
    })
}

/// Frees `*options` and sets `*options` to NULL. Accepts NULL and a pointer to NULL.
///
/// # Safety
/// `options` is NULL, or points to NULL or to live options from this library.
#[no_mangle]
pub unsafe extern "C" fn flowar_options_destroy(options: *mut *mut FlowarOptions) {
    // SAFETY: `options` is NULL, or points to NULL or to live options, which `put` made with
    // `Box::into_raw` (the caller's contract).
    unsafe { crate::destroy(options) }
}

/// Sets an option by name from a string. Names and values:
/// - "provider": "auto" (default: TensorRT, then CUDA, then onnxruntime CPU, then tract;
///   OpenVINO for a bfloat16 model), "ort-cpu", "cuda", "tensorrt", "openvino" or "tract".
///   A provider named explicitly that cannot be
///   used fails `flowar_pipeline_create` with `FLOWAR_CODE_PROVIDER_UNAVAILABLE`.
/// - "threads": intra-op threads of onnxruntime, OpenVINO and tract, a positive integer, or "0" / "auto" for
///   all cores.
/// - "device_id": the GPU ordinal for "cuda" / "tensorrt" (default "0").
/// - "ort_lib": path to libonnxruntime.so ("" restores the default search).
/// - "openvino_lib": path to libopenvino_c.so or its folder ("" restores the default
///   search: OPENVINO_LIB_PATH, then the pip-installed openvino of ./.venv, then python3's).
/// - CUDA / TensorRT: "mem_limit" (bytes, or "8GiB"), "cudnn_conv_algo_search"
///   ("exhaustive", "heuristic", "default"), "tf32" ("0"/"1", default 0), "trt_fp16"
///   (default 1), "trt_cache_dir" (engine and timing caches; default
///   `$XDG_CACHE_HOME/flowar`), "trt_max_batch" (largest `count` per generate call the
///   TensorRT engines are built for, default 1), "trt_workspace" (bytes).
///
/// An unknown name or a malformed value is `FLOWAR_CODE_BAD_ARGUMENT` and leaves the
/// options unchanged.
///
/// # Safety
/// `options` is NULL or live; `name` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn flowar_options_set(
    options: *mut FlowarOptions,
    name: *const c_char,
    value: *const c_char,
) -> *mut FlowarStatus {
    guard("flowar_options_set", || {
        // SAFETY: `options` is NULL or live (the caller's contract); NULL is handled by as_mut.
        let o = unsafe { options.as_mut() }.ok_or_else(|| bad("`options` is NULL"))?;
        // SAFETY: `name` is NULL or a NUL-terminated string (the caller's contract).
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: `value` is NULL or a NUL-terminated string (the caller's contract).
        let value = unsafe { c_str(value, "value") }?;
        o.set(name, Value::Str(value))
    })
}

/// Sets an integer option ("threads", "device_id") by name.
///
/// # Safety
/// `options` is NULL or live; `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn flowar_options_set_int(
    options: *mut FlowarOptions,
    name: *const c_char,
    value: i64,
) -> *mut FlowarStatus {
    guard("flowar_options_set_int", || {
        // SAFETY: `options` is NULL or live (the caller's contract); NULL is handled by as_mut.
        let o = unsafe { options.as_mut() }.ok_or_else(|| bad("`options` is NULL"))?;
        // SAFETY: `name` is NULL or a NUL-terminated string (the caller's contract).
        let name = unsafe { c_str(name, "name") }?;
        o.set(name, Value::Int(value))
    })
}
