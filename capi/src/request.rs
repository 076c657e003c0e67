//! A generation request: classes plus sampler settings, set by name, and optionally source
//! images to edit.

use std::ffi::c_char;

use flowar_runtime::sampler::schedule::Steps;
use flowar_runtime::{Error, Solver};

use crate::{bad, c_str, guard, out_handle, put, FlowarStatus, Value};

/// What to generate. Create with `flowar_request_create`, fill with
/// `flowar_request_set_classes` and the `flowar_request_set*` setters (and, for an edit,
/// `flowar_request_add_edit_image`), free with `flowar_request_destroy`. A request is not
/// tied to a pipeline and may be reused.
pub struct FlowarRequest {
    pub(crate) classes: Vec<usize>,
    pub(crate) first_index: u64,
    pub(crate) seed: u64,
    pub(crate) cfg: Option<f64>,
    pub(crate) guidance: Option<f64>,
    pub(crate) steps: Option<Steps>,
    pub(crate) solver: Solver,
    /// Source images to edit (empty: generate from scratch), with the edit settings.
    pub(crate) edit: EditSettings,
}

/// A source image as the caller handed it over (copied): `[height, width, channels]` bytes,
/// and its optional grey mask `[mask_height, mask_width]`.
#[derive(Debug, Clone)]
pub(crate) struct EditImage {
    pub(crate) pixels: Vec<u8>,
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) channels: usize,
    pub(crate) mask: Option<GreyMask>,
}

#[derive(Debug, Clone)]
pub(crate) struct GreyMask {
    pub(crate) values: Vec<u8>,
    pub(crate) width: usize,
    pub(crate) height: usize,
}

/// An edit's images and settings; the defaults are a request that generates from scratch.
#[derive(Debug, Clone)]
pub(crate) struct EditSettings {
    pub(crate) images: Vec<EditImage>,
    /// Edits per source image.
    pub(crate) count: usize,
    pub(crate) keep_scales: usize,
    pub(crate) invert_mask: bool,
    pub(crate) composite: bool,
    pub(crate) unconditional: bool,
}

impl Default for EditSettings {
    fn default() -> Self {
        EditSettings {
            images: Vec::new(),
            count: 1,
            keep_scales: 0,
            invert_mask: false,
            composite: false,
            unconditional: false,
        }
    }
}

impl EditSettings {
    /// The edit settings set to something other than their defaults (each needs images).
    pub(crate) fn changed(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.count != 1 {
            out.push("count");
        }
        if self.keep_scales != 0 {
            out.push("keep_scales");
        }
        if self.invert_mask {
            out.push("invert_mask");
        }
        if self.composite {
            out.push("composite");
        }
        if self.unconditional {
            out.push("unconditional");
        }
        out
    }
}

impl FlowarRequest {
    /// The number of images the request makes: one per class, or, for an edit, `count` per
    /// source image.
    pub(crate) fn num_images(&self) -> usize {
        if self.edit.images.is_empty() {
            self.classes.len()
        } else {
            self.edit.images.len().saturating_mul(self.edit.count)
        }
    }

    fn set(&mut self, name: &str, value: Value) -> Result<(), Error> {
        match name {
            "seed" => self.seed = value.uint(name)?,
            "first_index" => self.first_index = value.uint(name)?,
            "cfg" => self.cfg = Some(value.float(name)?),
            "guidance" => self.guidance = Some(value.float(name)?),
            "steps" => {
                self.steps = Some(match value {
                    // One count, or one per scale: "25,25,20,12,8".
                    Value::Str(s) if s.contains(',') => s.parse()?,
                    v => {
                        let n = v.uint(name)?;
                        Steps::Uniform(usize::try_from(n).map_err(|_| bad("`steps` is too large"))?)
                    }
                })
            }
            "solver" => self.solver = value.str(name)?.parse()?,
            "count" => {
                let n = value.uint(name)?;
                if n == 0 {
                    return Err(bad("`count` (edits per image) must be at least 1"));
                }
                self.edit.count = usize::try_from(n).map_err(|_| bad("`count` is too large"))?;
            }
            "keep_scales" => {
                let n = value.uint(name)?;
                self.edit.keep_scales =
                    usize::try_from(n).map_err(|_| bad("`keep_scales` is too large"))?;
            }
            "invert_mask" => self.edit.invert_mask = value.bool(name)?,
            "composite" => self.edit.composite = value.bool(name)?,
            "unconditional" => self.edit.unconditional = value.bool(name)?,
            _ => {
                return Err(bad(format!(
                    "unknown request setting `{name}` (known: seed, first_index, cfg, guidance, \
                     steps, solver, count, keep_scales, invert_mask, composite, unconditional)"
                )))
            }
        }
        Ok(())
    }
}

/// Creates an empty request: no classes yet, seed 0, first index 0, the Euler solver, and
/// cfg / guidance / steps taken from the model's manifest unless set. `*out` is NULL on
/// error.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_request_create(out: *mut *mut FlowarRequest) -> *mut FlowarStatus {
    guard("flowar_request_create", || {
        // SAFETY: `out` is NULL or valid for a write (the caller's contract).
        unsafe { out_handle(out, "out") }?;
        let request = FlowarRequest {
            classes: Vec::new(),
            first_index: 0,
            seed: 0,
            cfg: None,
            guidance: None,
            steps: None,
            solver: Solver::Euler,
            edit: EditSettings::default(),
        };
        // SAFETY: `out_handle` rejected NULL, so `out` is valid for a write (the contract).
        unsafe { put(out, request) };
        Ok(())
    })
}

/// Frees `*request` and sets `*request` to NULL. Accepts NULL and a pointer to NULL.
///
/// # Safety
/// `request` is NULL, or points to NULL or to a live request from this library.
#[no_mangle]
pub unsafe extern "C" fn flowar_request_destroy(request: *mut *mut FlowarRequest) {
    // SAFETY: `request` is NULL, or points to NULL or to a live request, which `put` made
    // with `Box::into_raw` (the caller's contract).
    unsafe { crate::destroy(request) }
}

/// Sets the images to generate: `count` images, image `i` of class `class_ids[i]`.
/// `class_ids` must hold `count` values; `count` must be at least 1; ids must be >= 0 (the
/// upper bound, the model's class count, is checked by `flowar_pipeline_generate`). For an
/// edit (a request with edit images) the classes are one for all images (`count` 1) or one
/// per edit image, in the order added.
///
/// # Safety
/// `request` is NULL or live; `class_ids` is NULL or points to `count` readable values.
#[no_mangle]
pub unsafe extern "C" fn flowar_request_set_classes(
    request: *mut FlowarRequest,
    class_ids: *const i32,
    count: usize,
) -> *mut FlowarStatus {
    guard("flowar_request_set_classes", || {
        // SAFETY: `request` is NULL or live (the caller's contract); NULL is handled by as_mut.
        let r = unsafe { request.as_mut() }.ok_or_else(|| bad("`request` is NULL"))?;
        if class_ids.is_null() {
            return Err(bad("`class_ids` is NULL"));
        }
        if count == 0 {
            return Err(bad("`count` is 0: request at least one image"));
        }
        if count > isize::MAX as usize / std::mem::size_of::<i32>() {
            return Err(bad(format!("`count` {count} is too large")));
        }
        // SAFETY: `class_ids` is not NULL, so it points to `count` readable values (the
        // caller's contract); `count * 4 <= isize::MAX` (both checked above).
        let ids = unsafe { std::slice::from_raw_parts(class_ids, count) };
        let classes = ids
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                usize::try_from(c).map_err(|_| bad(format!("class_ids[{i}] = {c} is negative")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        r.classes = classes;
        Ok(())
    })
}

/// Sets a request setting by name from a string. Names and values:
/// - "seed": a non-negative integer (0 .. 2^64-1), default 0. Image `k` (its global
///   index) draws its noise from stream `k` of this seed, so it is the same whatever the
///   batch.
/// - "first_index": the global index of the first image (default 0); image `i` of the
///   request has index `first_index + i`.
/// - "cfg": classifier-free guidance scale, >= 1 (1 turns guidance off).
/// - "guidance": the guidance window, within [0, 1].
/// - "steps": ODE steps per scale, >= 2: one count for every scale ("25"), or one per
///   scale, coarse to fine ("25,25,20,12,8"; fewer at the fine scales is faster and no
///   longer the reference's output). A schedule's length must match the model's scales.
/// - "solver": "euler" (default) or "heun".
///
/// Edit settings (they need source images, see `flowar_request_add_edit_image`;
/// `flowar_pipeline_generate` refuses them on a request without any):
/// - "count": edits per source image, >= 1 (default 1). Edit `j` of image `i` is output
///   image `i * count + j`, with global index `first_index + i * count + j`.
/// - "keep_scales": keep the first K scales of the source whole (a variation); with a
///   mask, the mask applies from scale K on. At most the model's number of scales.
/// - "invert_mask": 0 / 1 (or "false" / "true"): regenerate outside the mask instead
///   (out-painting). Needs a mask on at least one image.
/// - "composite": 0 / 1: paste the source's pixels back wherever its mask keeps them, so
///   the kept region is the input's bit for bit. Every image needs a mask.
/// - "unconditional": 0 / 1: edit without a class (the model's null class with guidance
///   off); the request must then have no classes, and cfg must be 1 or unset.
///
/// cfg, guidance and steps default to the model's sampler defaults. Range checks that
/// need the model happen in `flowar_pipeline_generate`. An unknown name or a malformed
/// value is `FLOWAR_CODE_BAD_ARGUMENT` and leaves the request unchanged.
///
/// # Safety
/// `request` is NULL or live; `name` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn flowar_request_set(
    request: *mut FlowarRequest,
    name: *const c_char,
    value: *const c_char,
) -> *mut FlowarStatus {
    guard("flowar_request_set", || {
        // SAFETY: `request` is NULL or live (the caller's contract); NULL is handled by as_mut.
        let r = unsafe { request.as_mut() }.ok_or_else(|| bad("`request` is NULL"))?;
        // SAFETY: `name` is NULL or a NUL-terminated string (the caller's contract).
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: `value` is NULL or a NUL-terminated string (the caller's contract).
        let value = unsafe { c_str(value, "value") }?;
        r.set(name, Value::Str(value))
    })
}

/// Sets a numeric request setting ("seed", "first_index", "steps", "cfg", "guidance",
/// "count", "keep_scales") or a switch ("invert_mask", "composite", "unconditional": 0 or
/// 1) from an integer. Negative values are errors.
///
/// # Safety
/// `request` is NULL or live; `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn flowar_request_set_int(
    request: *mut FlowarRequest,
    name: *const c_char,
    value: i64,
) -> *mut FlowarStatus {
    guard("flowar_request_set_int", || {
        // SAFETY: `request` is NULL or live (the caller's contract); NULL is handled by as_mut.
        let r = unsafe { request.as_mut() }.ok_or_else(|| bad("`request` is NULL"))?;
        // SAFETY: `name` is NULL or a NUL-terminated string (the caller's contract).
        let name = unsafe { c_str(name, "name") }?;
        r.set(name, Value::Int(value))
    })
}

/// Sets a real-valued request setting ("cfg", "guidance") from a double. NaN and
/// infinities are errors; integer settings refuse a double.
///
/// # Safety
/// `request` is NULL or live; `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn flowar_request_set_float(
    request: *mut FlowarRequest,
    name: *const c_char,
    value: f64,
) -> *mut FlowarStatus {
    guard("flowar_request_set_float", || {
        // SAFETY: `request` is NULL or live (the caller's contract); NULL is handled by as_mut.
        let r = unsafe { request.as_mut() }.ok_or_else(|| bad("`request` is NULL"))?;
        // SAFETY: `name` is NULL or a NUL-terminated string (the caller's contract).
        let name = unsafe { c_str(name, "name") }?;
        r.set(name, Value::Float(value))
    })
}

/// Adds a source image to edit, with an optional mask; the request then edits its images
/// (image `i` in the order added) instead of generating from scratch. Both buffers are
/// copied: the caller may free them when the call returns.
///
/// - `pixels`: `height` rows of `width` pixels, top to bottom, each `channels` bytes: 3
///   (`R, G, B`) or 4 (`R, G, B, A`). `pixels_len` must be exactly
///   `width * height * channels`. An RGBA image whose alpha is not fully opaque and that has
///   no `mask` is masked by its alpha (transparent = regenerate). Any size is accepted:
///   images of another size than the model's are fitted to it the way the reference's data
///   pipeline prepares images (box-halved while at least twice its size, bicubic resize
///   of the short side, centre crop).
/// - `mask` (may be NULL: no mask): `mask_height` rows of `mask_width` grey bytes, any
///   value above 0 = regenerate (white), 0 = keep. `mask_len` must be exactly
///   `mask_width * mask_height`. It must be the image's size or the model's (checked by
///   `flowar_pipeline_generate`) and is fitted like the image. With a NULL mask,
///   `mask_len`, `mask_width` and `mask_height` must be 0.
///
/// An image without a mask (nor alpha) is regenerated whole from scale `keep_scales` on.
/// Classes: one for all images or one per image (`flowar_request_set_classes`), or the
/// "unconditional" setting. Errors (`FLOWAR_CODE_BAD_ARGUMENT`, the request unchanged):
/// NULL request or pixels, channels not 3 or 4, an empty image or mask, a length that is
/// not the stated size.
///
/// # Safety
/// `request` is NULL or live; `pixels` is NULL or valid for `pixels_len` bytes of reads;
/// `mask` is NULL or valid for `mask_len` bytes of reads.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn flowar_request_add_edit_image(
    request: *mut FlowarRequest,
    pixels: *const u8,
    pixels_len: usize,
    width: usize,
    height: usize,
    channels: usize,
    mask: *const u8,
    mask_len: usize,
    mask_width: usize,
    mask_height: usize,
) -> *mut FlowarStatus {
    guard("flowar_request_add_edit_image", || {
        // SAFETY: `request` is NULL or live (the caller's contract); NULL is handled by as_mut.
        let r = unsafe { request.as_mut() }.ok_or_else(|| bad("`request` is NULL"))?;
        if pixels.is_null() {
            return Err(bad("`pixels` is NULL"));
        }
        if !(channels == 3 || channels == 4) {
            return Err(bad(format!(
                "`channels` is {channels}: a source image has 3 (RGB) or 4 (RGBA) channels"
            )));
        }
        let need = image_len(width, height, channels, "the image")?;
        if pixels_len != need {
            return Err(bad(format!(
                "`pixels_len` is {pixels_len} bytes, but a {width}x{height} image with \
                 {channels} channels holds {need}"
            )));
        }
        let mask = if mask.is_null() {
            if (mask_len, mask_width, mask_height) != (0, 0, 0) {
                return Err(bad(format!(
                    "`mask` is NULL (no mask) but `mask_len`, `mask_width`, `mask_height` are \
                     {mask_len}, {mask_width}, {mask_height}: pass 0 for each without a mask"
                )));
            }
            None
        } else {
            let need = image_len(mask_width, mask_height, 1, "the mask")?;
            if mask_len != need {
                return Err(bad(format!(
                    "`mask_len` is {mask_len} bytes, but a {mask_width}x{mask_height} mask \
                     holds {need} (one grey byte per pixel)"
                )));
            }
            // SAFETY: `mask` is not NULL, so it is valid for `mask_len` bytes of reads (the
            // caller's contract); `mask_len <= isize::MAX` (`image_len`).
            let values = unsafe { std::slice::from_raw_parts(mask, mask_len) }.to_vec();
            Some(GreyMask {
                values,
                width: mask_width,
                height: mask_height,
            })
        };
        // SAFETY: `pixels` is not NULL, so it is valid for `pixels_len` bytes of reads (the
        // caller's contract); `pixels_len <= isize::MAX` (`image_len`).
        let pixels = unsafe { std::slice::from_raw_parts(pixels, pixels_len) }.to_vec();
        r.edit.images.push(EditImage {
            pixels,
            width,
            height,
            channels,
            mask,
        });
        Ok(())
    })
}

/// `width * height * channels` bytes, for a non-empty image whose sides fit in 32 bits.
fn image_len(width: usize, height: usize, channels: usize, what: &str) -> Result<usize, Error> {
    if width == 0 || height == 0 {
        return Err(bad(format!(
            "{what} is {width}x{height}: it must not be empty"
        )));
    }
    if u32::try_from(width).is_err() || u32::try_from(height).is_err() {
        return Err(bad(format!("{what} is {width}x{height}: too large")));
    }
    width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(channels))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| bad(format!("{what} is {width}x{height}: too large")))
}

/// Removes the request's edit images and resets the edit settings ("count",
/// "keep_scales", "invert_mask", "composite", "unconditional") to their defaults: the
/// request generates from scratch again. Classes and the other settings are kept.
///
/// # Safety
/// `request` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn flowar_request_clear_edit(
    request: *mut FlowarRequest,
) -> *mut FlowarStatus {
    guard("flowar_request_clear_edit", || {
        // SAFETY: `request` is NULL or live (the caller's contract); NULL is handled by as_mut.
        let r = unsafe { request.as_mut() }.ok_or_else(|| bad("`request` is NULL"))?;
        r.edit = EditSettings::default();
        Ok(())
    })
}

/// The number of images `flowar_pipeline_generate` makes for this request (size its buffer
/// with `flowar_pipeline_buffer_size`): the number of class ids (0 before
/// `flowar_request_set_classes`), or, for an edit, the number of edit images times
/// "count".
///
/// # Safety
/// `request` is NULL or live; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flowar_request_image_count(
    request: *const FlowarRequest,
    out: *mut usize,
) -> *mut FlowarStatus {
    guard("flowar_request_image_count", || {
        // SAFETY: `request` is NULL or live (the caller's contract); NULL is handled by as_ref.
        let r = unsafe { request.as_ref() }.ok_or_else(|| bad("`request` is NULL"))?;
        if out.is_null() {
            return Err(bad("`out` is NULL"));
        }
        let n = r.num_images();
        // SAFETY: `out` is not NULL (checked above), so it is valid for a write (the contract).
        unsafe { *out = n };
        Ok(())
    })
}
