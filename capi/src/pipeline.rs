//! Loaded pipelines: creation, queries and generation into a caller's buffer.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;

use flowar_runtime::{Error, Pipeline, PipelineOptions, Progress, Request};

use crate::{bad, c_str, guard, out_handle, put, FlowarOptions, FlowarRequest, FlowarStatus};

/// Bytes per pixel of the output images (RGB8).
const CHANNELS: usize = 3;

/// A loaded model on one execution provider.
///
/// Thread safety: the handle is `Send`, not `Sync` in Rust terms. Calls on one pipeline
/// are serialized by an internal mutex (a second thread calling `flowar_pipeline_generate`
/// on the same pipeline waits for the first), so use one pipeline per thread for parallel
/// generation. Different pipelines run concurrently. Destroying a pipeline while another
/// thread uses it is undefined behaviour.
pub struct FlowarPipeline {
    inner: Mutex<Pipeline>,
    width: usize,
    height: usize,
    num_classes: usize,
    num_scales: usize,
    /// The model's sampler defaults, which each call's request settings replace.
    defaults: Request,
    provider: CString,
}

/// Progress callback, called after every ODE step: `scale` is the 0-based scale index
/// (0 .. num_scales-1), `step` the 1-based step within that scale, `total_steps` the
/// number of steps in that scale. Return 0 to continue, nonzero to cancel: the run stops
/// and `flowar_pipeline_generate` returns `FLOWAR_CODE_CANCELLED`. It runs on the thread
/// that called `flowar_pipeline_generate`, and must not throw C++ exceptions or longjmp,
/// nor call `flowar_pipeline_generate` on the same pipeline (that would deadlock).
pub type FlowarProgressFn = Option<
    unsafe extern "C" fn(
        scale: c_int,
        step: c_int,
        total_steps: c_int,
        user_data: *mut c_void,
    ) -> c_int,
>;

/// Loads the model folder `model_dir` (made by `flowar convert`) with `options` (NULL for
/// the defaults). `*out` is NULL on error. Errors: a missing or corrupt model folder
/// (`FLOWAR_CODE_MODEL` or `FLOWAR_CODE_IO`), a provider that cannot be used here
/// (`FLOWAR_CODE_PROVIDER_UNAVAILABLE`).
///
/// # Safety
/// `model_dir` is NULL or a NUL-terminated string; `options` is NULL or live; `out` is
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_create(
    model_dir: *const c_char,
    options: *const FlowarOptions,
    out: *mut *mut FlowarPipeline,
) -> *mut FlowarStatus {
    guard("flowar_pipeline_create", || {
        // SAFETY: `out` is NULL or valid for a write (the caller's contract).
        unsafe { out_handle(out, "out") }?;
        // SAFETY: `model_dir` is NULL or a NUL-terminated string (the caller's contract).
        let dir = unsafe { c_str(model_dir, "model_dir") }?;
        if dir.is_empty() {
            return Err(bad("`model_dir` is empty"));
        }
        // SAFETY: `options` is NULL or live (the caller's contract); NULL is handled by as_ref.
        let opts = match unsafe { options.as_ref() } {
            Some(o) => o.inner.clone(),
            None => PipelineOptions::default(),
        };
        let pipe = Pipeline::load(dir.as_ref(), &opts)?;
        let m = pipe.manifest();
        let p = FlowarPipeline {
            width: m.image_size,
            height: m.image_size,
            num_classes: m.num_classes,
            num_scales: m.scales.len(),
            defaults: pipe.request(),
            provider: CString::new(pipe.provider().provider.name()).unwrap_or_default(),
            inner: Mutex::new(pipe),
        };
        // SAFETY: `out_handle` rejected NULL, so `out` is valid for a write (the contract).
        unsafe { put(out, p) };
        Ok(())
    })
}

/// Frees `*pipeline` and sets `*pipeline` to NULL. Accepts NULL and a pointer to NULL.
///
/// # Safety
/// `pipeline` is NULL, or points to NULL or to a live pipeline not in use by another
/// thread.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_destroy(pipeline: *mut *mut FlowarPipeline) {
    // SAFETY: `pipeline` is NULL, or points to NULL or to a live pipeline not in use elsewhere,
    // which `put` made with `Box::into_raw` (the caller's contract).
    unsafe { crate::destroy(pipeline) }
}

/// Reads one property of a pipeline into `*out`.
///
/// # Safety
/// `pipeline` is NULL or live; `out` is NULL or valid for a write.
unsafe fn query<T: Copy>(
    func: &str,
    pipeline: *const FlowarPipeline,
    out: *mut T,
    get: impl FnOnce(&FlowarPipeline) -> T,
) -> *mut FlowarStatus {
    guard(func, || {
        // SAFETY: `pipeline` is NULL or live (the caller's contract); NULL is handled by as_ref.
        let p = unsafe { pipeline.as_ref() }.ok_or_else(|| bad("`pipeline` is NULL"))?;
        if out.is_null() {
            return Err(bad("`out` is NULL"));
        }
        let value = get(p);
        // SAFETY: `out` is not NULL (checked above), so it is valid for a write (the contract).
        unsafe { *out = value };
        Ok(())
    })
}

/// Width in pixels of the images this pipeline generates.
///
/// # Safety
/// `pipeline` is NULL or live; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_image_width(
    pipeline: *const FlowarPipeline,
    out: *mut usize,
) -> *mut FlowarStatus {
    // SAFETY: `pipeline` is NULL or live and `out` is NULL or valid for a write (the
    // caller's contract), as `query` requires.
    unsafe { query("flowar_pipeline_image_width", pipeline, out, |p| p.width) }
}

/// Height in pixels of the images this pipeline generates.
///
/// # Safety
/// `pipeline` is NULL or live; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_image_height(
    pipeline: *const FlowarPipeline,
    out: *mut usize,
) -> *mut FlowarStatus {
    // SAFETY: `pipeline` is NULL or live and `out` is NULL or valid for a write (the
    // caller's contract), as `query` requires.
    unsafe { query("flowar_pipeline_image_height", pipeline, out, |p| p.height) }
}

/// Bytes per pixel of the output (always 3: RGB8).
///
/// # Safety
/// `pipeline` is NULL or live; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_image_channels(
    pipeline: *const FlowarPipeline,
    out: *mut usize,
) -> *mut FlowarStatus {
    // SAFETY: `pipeline` is NULL or live and `out` is NULL or valid for a write (the
    // caller's contract), as `query` requires.
    unsafe {
        query("flowar_pipeline_image_channels", pipeline, out, |_| {
            CHANNELS
        })
    }
}

/// Number of classes: valid class ids are 0 .. count-1.
///
/// # Safety
/// `pipeline` is NULL or live; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_num_classes(
    pipeline: *const FlowarPipeline,
    out: *mut usize,
) -> *mut FlowarStatus {
    // SAFETY: `pipeline` is NULL or live and `out` is NULL or valid for a write (the
    // caller's contract), as `query` requires.
    unsafe {
        query("flowar_pipeline_num_classes", pipeline, out, |p| {
            p.num_classes
        })
    }
}

/// Number of scales (the `scale` argument of the progress callback runs 0 .. count-1).
///
/// # Safety
/// `pipeline` is NULL or live; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_num_scales(
    pipeline: *const FlowarPipeline,
    out: *mut usize,
) -> *mut FlowarStatus {
    // SAFETY: `pipeline` is NULL or live and `out` is NULL or valid for a write (the
    // caller's contract), as `query` requires.
    unsafe {
        query("flowar_pipeline_num_scales", pipeline, out, |p| {
            p.num_scales
        })
    }
}

/// Bytes `flowar_pipeline_generate` needs for `count` images:
/// `count * height * width * channels`. `count` 0 or an overflowing size is an error.
///
/// # Safety
/// `pipeline` is NULL or live; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_buffer_size(
    pipeline: *const FlowarPipeline,
    count: usize,
    out: *mut usize,
) -> *mut FlowarStatus {
    guard("flowar_pipeline_buffer_size", || {
        // SAFETY: `pipeline` is NULL or live (the caller's contract); NULL is handled by as_ref.
        let p = unsafe { pipeline.as_ref() }.ok_or_else(|| bad("`pipeline` is NULL"))?;
        if out.is_null() {
            return Err(bad("`out` is NULL"));
        }
        let size = p.buffer_size(count)?;
        // SAFETY: `out` is not NULL (checked above), so it is valid for a write (the contract).
        unsafe { *out = size };
        Ok(())
    })
}

/// The name of the execution provider running the graphs ("ort-cpu", "cuda", "tensorrt",
/// "openvino" or "tract"; "auto" resolves to one of them). The string belongs to the pipeline: it is
/// valid until `flowar_pipeline_destroy`.
///
/// # Safety
/// `pipeline` is NULL or live; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_provider(
    pipeline: *const FlowarPipeline,
    out: *mut *const c_char,
) -> *mut FlowarStatus {
    // SAFETY: `pipeline` is NULL or live and `out` is NULL or valid for a write (the
    // caller's contract), as `query` requires.
    unsafe {
        query("flowar_pipeline_provider", pipeline, out, |p| {
            p.provider.as_ptr()
        })
    }
}

impl FlowarPipeline {
    fn buffer_size(&self, count: usize) -> Result<usize, Error> {
        if count == 0 {
            return Err(bad("`count` is 0"));
        }
        count
            .checked_mul(self.width)
            .and_then(|n| n.checked_mul(self.height))
            .and_then(|n| n.checked_mul(CHANNELS))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(|| bad(format!("{count} images do not fit in memory")))
    }
}

/// Generates the request's images into `out_rgb`: image `i` (in the order of the class
/// ids) at byte offset `i * height * width * 3`, rows top to bottom, pixels `R, G, B`.
/// `out_len` is the buffer's size in bytes and must be at least
/// `flowar_pipeline_buffer_size(count)`; the buffer is written only on success.
///
/// `progress` (may be NULL) is called after every ODE step with `user_data`; a nonzero
/// return cancels the run (`FLOWAR_CODE_CANCELLED`). The call blocks until the images are
/// done; on one pipeline, concurrent calls wait for each other.
///
/// Errors: NULL pipeline / request / buffer, a request without classes, a class id >= the
/// model's class count, a buffer too small, cfg < 1, guidance outside [0, 1], steps < 2
/// (`FLOWAR_CODE_BAD_ARGUMENT`, checked before any work); cancellation; backend failures.
///
/// # Safety
/// `pipeline` and `request` are NULL or live; `out_rgb` is NULL or valid for `out_len`
/// bytes of writes; `progress` is NULL or a function of the documented signature.
#[no_mangle]
pub unsafe extern "C" fn flowar_pipeline_generate(
    pipeline: *mut FlowarPipeline,
    request: *const FlowarRequest,
    out_rgb: *mut u8,
    out_len: usize,
    progress: FlowarProgressFn,
    user_data: *mut c_void,
) -> *mut FlowarStatus {
    guard("flowar_pipeline_generate", || {
        // SAFETY: `pipeline` is NULL or live (the caller's contract); NULL is handled by as_ref.
        let p = unsafe { pipeline.as_ref() }.ok_or_else(|| bad("`pipeline` is NULL"))?;
        // SAFETY: `request` is NULL or live (the caller's contract); NULL is handled by as_ref.
        let r = unsafe { request.as_ref() }.ok_or_else(|| bad("`request` is NULL"))?;
        if out_rgb.is_null() {
            return Err(bad("`out_rgb` is NULL"));
        }
        if r.classes.is_empty() {
            return Err(bad(
                "the request has no classes: call flowar_request_set_classes first",
            ));
        }
        let need = p.buffer_size(r.classes.len())?;
        if out_len < need {
            return Err(bad(format!(
                "`out_len` is {out_len} bytes, too small for {} images of {}x{}x{}: need {need}",
                r.classes.len(),
                p.width,
                p.height,
                CHANNELS
            )));
        }
        let req = p
            .defaults
            .clone()
            .with_sampler(r.cfg, r.guidance, None)
            .with_images(r.classes.clone(), r.first_index)?
            .with_seed(r.seed)
            .with_solver(r.solver);
        let req = match &r.steps {
            Some(steps) => req.with_steps(steps),
            None => req,
        };
        let mut pipe = p.inner.lock().map_err(|_| Error::Poisoned {
            what: "this pipeline".into(),
        })?;
        let clamp = |v: usize| c_int::try_from(v).unwrap_or(c_int::MAX);
        let mut on_progress = |pr: &Progress| match progress {
            None => true,
            Some(f) => {
                let (scale, step, steps) = (clamp(pr.scale), clamp(pr.step), clamp(pr.steps));
                // SAFETY: `progress` is a function of the documented signature (the caller's
                // contract); `user_data` is passed through as the caller gave it.
                let rc = unsafe { f(scale, step, steps, user_data) };
                rc == 0
            }
        };
        let output = pipe.generate(&req, &mut on_progress)?;
        drop(pipe);
        let size = p.width * p.height * CHANNELS;
        if output.images.len() != r.classes.len()
            || output
                .images
                .iter()
                .any(|im| im.width != p.width || im.height != p.height || im.pixels.len() != size)
        {
            return Err(Error::Model {
                path: "manifest.json".into(),
                reason: format!(
                    "the manifest says {}x{} images but the VAE decoder produced a different size",
                    p.width, p.height
                ),
            });
        }
        // SAFETY: `out_rgb` is not NULL (checked above), so it is valid for `out_len >= need`
        // bytes of writes (the caller's contract); `need <= isize::MAX` (`buffer_size`).
        let dst = unsafe { std::slice::from_raw_parts_mut(out_rgb, need) };
        for (chunk, img) in dst.chunks_exact_mut(size).zip(&output.images) {
            chunk.copy_from_slice(&img.pixels);
        }
        Ok(())
    })
}
