//! A generation request: classes plus sampler settings, set by name.

use std::ffi::c_char;

use flowar_runtime::sampler::schedule::Steps;
use flowar_runtime::{Error, Solver};

use crate::{bad, c_str, guard, out_handle, put, FlowarStatus, Value};

/// What to generate. Create with `flowar_request_create`, fill with
/// `flowar_request_set_classes` and the `flowar_request_set*` setters, free with
/// `flowar_request_destroy`. A request is not tied to a pipeline and may be reused.
pub struct FlowarRequest {
    pub(crate) classes: Vec<usize>,
    pub(crate) first_index: u64,
    pub(crate) seed: u64,
    pub(crate) cfg: Option<f64>,
    pub(crate) guidance: Option<f64>,
    pub(crate) steps: Option<Steps>,
    pub(crate) solver: Solver,
}

impl FlowarRequest {
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
            _ => {
                return Err(bad(format!(
                    "unknown request setting `{name}` (known: seed, first_index, cfg, guidance, steps, solver)"
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
/// upper bound, the model's class count, is checked by `flowar_pipeline_generate`).
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

/// Sets a numeric request setting ("seed", "first_index", "steps", "cfg", "guidance")
/// from an integer. Negative values are errors.
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
