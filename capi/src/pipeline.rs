//! Loaded pipelines: creation, queries and generation into a caller's buffer.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;

use flowar_runtime::edit_input;
use flowar_runtime::image::RgbImage;
use flowar_runtime::{Error, Mask, Pipeline, PipelineOptions, Progress, Request};

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

/// Generates the request's images into `out_rgb`: image `i` at byte offset
/// `i * height * width * 3`, rows top to bottom, pixels `R, G, B`. Without edit images,
/// image `i` is of class `class_ids[i]`; with edit images (`flowar_request_add_edit_image`),
/// image `i * count + j` is edit `j` of source image `i` ("count" defaults to 1).
/// `out_len` is the buffer's size in bytes and must be at least
/// `flowar_pipeline_buffer_size(n)`, `n` from `flowar_request_image_count`; the buffer is
/// written only on success.
///
/// An edit encodes each source image once with the model's VAE encoder, then samples with
/// the source's tokens teacher-forced wherever they are kept: where the mask is 0 (or,
/// with "invert_mask", where it is not), and at scales below "keep_scales". With
/// "composite", the source's pixels are pasted back where the mask keeps them.
///
/// `progress` (may be NULL) is called after every ODE step with `user_data`; a nonzero
/// return cancels the run (`FLOWAR_CODE_CANCELLED`). The call blocks until the images are
/// done; on one pipeline, concurrent calls wait for each other.
///
/// Errors (`FLOWAR_CODE_BAD_ARGUMENT`, checked before any work unless noted): NULL pipeline
/// / request / buffer, a request without classes, a class id >= the model's class count, a
/// buffer too small, cfg < 1, guidance outside [0, 1], steps < 2. For an edit: a model
/// folder without a VAE encoder (`FLOWAR_CODE_MODEL`, checked first), classes neither one
/// nor one per image, classes with "unconditional", "unconditional" with cfg other than 1,
/// "keep_scales" past the model's scales, a mask neither its image's size nor the model's,
/// "invert_mask" without any mask, "composite" with an image without a mask; edit
/// settings on a request without edit images. Then: cancellation; backend failures.
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
        let editing = !r.edit.images.is_empty();
        if !editing {
            if let Some(name) = r.edit.changed().first() {
                return Err(bad(format!(
                    "`{name}` is an edit setting, but the request has no edit images: add them \
                     with flowar_request_add_edit_image (or reset the edit settings with \
                     flowar_request_clear_edit)"
                )));
            }
            if r.classes.is_empty() {
                return Err(bad(
                    "the request has no classes: call flowar_request_set_classes first",
                ));
            }
        }
        let n = r.num_images();
        let need = p.buffer_size(n)?;
        if out_len < need {
            return Err(bad(format!(
                "`out_len` is {out_len} bytes, too small for {n} images of {}x{}x{}: need {need}",
                p.width, p.height, CHANNELS
            )));
        }
        let base = p
            .defaults
            .clone()
            .with_sampler(r.cfg, r.guidance, None)
            .with_seed(r.seed)
            .with_solver(r.solver);
        let base = match &r.steps {
            Some(steps) => base.with_steps(steps),
            None => base,
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
        let (mut output, edit) = if editing {
            let (req, edit) = prepare_edit(&mut pipe, r, base)?;
            (pipe.generate(&req, &mut on_progress)?, Some(edit))
        } else {
            let req = base.with_images(r.classes.clone(), r.first_index)?;
            (pipe.generate(&req, &mut on_progress)?, None)
        };
        drop(pipe);
        let size = p.width * p.height * CHANNELS;
        if output.images.len() != n
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
        if let Some(edit) = edit.filter(|e| e.composite) {
            for (row, img) in output.images.iter_mut().enumerate() {
                let i = row / edit.count;
                let mask = edit.masks[i]
                    .as_ref()
                    .ok_or_else(|| bad(format!("edit image {i} has no mask to composite with")))?;
                edit_input::composite(img, &edit.sources[i], mask)?;
            }
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

/// What compositing an edit's outputs needs: per source image its fitted pixels and mask.
struct PreparedEdit {
    sources: Vec<RgbImage>,
    masks: Vec<Option<Mask>>,
    count: usize,
    composite: bool,
}

/// Checks an edit request against the model, fits its images and masks, and encodes them:
/// the request to sample (`base` with the edit's classes, indices and plan). Every check
/// comes before the encoder runs.
fn prepare_edit(
    pipe: &mut Pipeline,
    r: &FlowarRequest,
    base: Request,
) -> Result<(Request, PreparedEdit), Error> {
    // Before anything else: a folder without an encoder says how to get one.
    pipe.model_mut().require_encoder()?;
    let e = &r.edit;
    let m = pipe.manifest();
    let (size, null_class, scales) = (m.image_size, m.null_class, m.scales.clone());
    let n = e.images.len();
    if e.keep_scales > scales.len() {
        return Err(bad(format!(
            "`keep_scales` {} exceeds the model's {} scales {scales:?}",
            e.keep_scales,
            scales.len()
        )));
    }
    let (classes, base) = if e.unconditional {
        if !r.classes.is_empty() {
            return Err(bad(format!(
                "`unconditional` edits use the model's null class, but the request also has \
                 {} class id(s): use a request without classes, or unset `unconditional`",
                r.classes.len()
            )));
        }
        if let Some(cfg) = r.cfg.filter(|&c| c != 1.0) {
            return Err(bad(format!(
                "`unconditional` edits have no class for guidance to steer to, so cfg must be \
                 1 or unset, not {cfg}"
            )));
        }
        (
            vec![null_class; n],
            base.with_sampler(Some(1.0), None, None),
        )
    } else {
        let classes = match r.classes.len() {
            0 => {
                return Err(bad(
                    "an edit needs classes: one for all edit images or one per image \
                     (flowar_request_set_classes), or the `unconditional` setting",
                ))
            }
            1 => vec![r.classes[0]; n],
            k if k == n => r.classes.clone(),
            k => {
                return Err(bad(format!(
                    "{k} classes for {n} edit images: give one class per image, or one for all"
                )))
            }
        };
        (classes, base)
    };
    let inputs = e
        .images
        .iter()
        .enumerate()
        .map(|(i, im)| {
            let mask = im.mask.as_ref().map(|g| (&g.values[..], g.height, g.width));
            edit_input::from_pixels(
                i,
                (&im.pixels, im.height, im.width, im.channels),
                mask,
                e.invert_mask,
                size,
            )
        })
        .collect::<flowar_runtime::Result<Vec<_>>>()?;
    edit_input::check(&inputs, e.invert_mask, e.composite)?;
    let (sources, masks): (Vec<_>, Vec<_>) =
        inputs.into_iter().map(|i| (i.source.image, i.mask)).unzip();
    // Row `k` edits image `k / count`.
    let rows: Vec<usize> = (0..n * e.count).map(|k| k / e.count).collect();
    let row_classes = rows.iter().map(|&i| classes[i]).collect();
    let req = base.with_images(row_classes, r.first_index)?;
    // The sampler settings against the model, before the encoder runs.
    pipe.validate(&req)?;
    let plan = pipe.edit_plan(&sources, &masks, e.keep_scales, &rows)?;
    let edit = PreparedEdit {
        sources,
        masks,
        count: e.count,
        composite: e.composite,
    };
    Ok((req.with_edit(Some(plan)), edit))
}
