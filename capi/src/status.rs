//! Errors as caller-owned status objects.

use std::any::Any;
use std::ffi::{c_char, CString};

use flowar_runtime::Error;

use crate::guard_value;

/// What kind of error a status reports. `FLOWAR_CODE_OK` is only returned for a NULL status.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowarCode {
    /// Success (a NULL status).
    Ok = 0,
    /// A NULL, malformed or out-of-range argument: NULL handle or buffer, non-UTF-8 string,
    /// unknown option name, buffer too small, no classes, class id out of range, bad
    /// cfg / guidance / steps / solver; for an edit, an image or mask whose size does not
    /// fit, classes that are neither one nor one per image, keep_scales past the model's
    /// scales, composite without a mask.
    BadArgument = 1,
    /// A file could not be read or written.
    Io = 2,
    /// The model folder, its manifest or a graph is missing, corrupt or inconsistent (an
    /// edit on a folder without a VAE encoder, too), or the model produced non-finite
    /// values.
    Model = 3,
    /// The execution provider asked for cannot be used here (e.g. "cuda" without a GPU
    /// build of onnxruntime); the message says what is missing.
    ProviderUnavailable = 4,
    /// The progress callback returned nonzero.
    Cancelled = 5,
    /// A backend failed while running a graph, or a bug (a caught panic).
    Internal = 6,
}

/// An error: a code and a message. Owned by the caller; free it with
/// `flowar_status_destroy`.
pub struct FlowarStatus {
    code: FlowarCode,
    message: CString,
}

pub(crate) fn new_status(code: FlowarCode, message: String) -> *mut FlowarStatus {
    // A message cannot hold NUL bytes in C; replace any (they would come from user input).
    let message = CString::new(message.replace('\0', "\u{FFFD}")).unwrap_or_default();
    Box::into_raw(Box::new(FlowarStatus { code, message }))
}

pub(crate) fn code_of(e: &Error) -> FlowarCode {
    match e {
        Error::BadArgument(_) => FlowarCode::BadArgument,
        Error::Io { .. } => FlowarCode::Io,
        Error::Model { .. } | Error::NonFinite { .. } => FlowarCode::Model,
        Error::ProviderUnavailable { .. } => FlowarCode::ProviderUnavailable,
        Error::Cancelled => FlowarCode::Cancelled,
        Error::Backend { .. } | Error::Poisoned { .. } => FlowarCode::Internal,
    }
}

pub(crate) fn from_error(func: &str, e: &Error) -> *mut FlowarStatus {
    new_status(code_of(e), format!("{func}: {e}"))
}

pub(crate) fn from_panic(func: &str, payload: &(dyn Any + Send)) -> *mut FlowarStatus {
    let what = flowar_runtime::error::panic_message(payload)
        .unwrap_or_else(|| "unknown panic payload".into());
    new_status(
        FlowarCode::Internal,
        format!("{func}: internal error (a panic was caught at the C boundary): {what}"),
    )
}

/// The status's code; `FLOWAR_CODE_OK` for NULL (success).
///
/// # Safety
/// `status` is NULL or a live status from this library.
#[no_mangle]
pub unsafe extern "C" fn flowar_status_code(status: *const FlowarStatus) -> FlowarCode {
    guard_value(FlowarCode::Internal, || {
        // SAFETY: `status` is NULL or live (the caller's contract); NULL is handled by as_ref.
        match unsafe { status.as_ref() } {
            None => FlowarCode::Ok,
            Some(s) => s.code,
        }
    })
}

/// The status's message, NUL-terminated UTF-8, never NULL ("ok" for a NULL status). It
/// names the function that failed and what was wrong. The string belongs to the status:
/// it is valid until `flowar_status_destroy`.
///
/// # Safety
/// `status` is NULL or a live status from this library.
#[no_mangle]
pub unsafe extern "C" fn flowar_status_message(status: *const FlowarStatus) -> *const c_char {
    guard_value(c"internal error".as_ptr(), || {
        // SAFETY: `status` is NULL or live (the caller's contract); NULL is handled by as_ref.
        match unsafe { status.as_ref() } {
            None => c"ok".as_ptr(),
            Some(s) => s.message.as_ptr(),
        }
    })
}

/// Frees `*status` and sets `*status` to NULL. Accepts NULL and a pointer to NULL.
///
/// # Safety
/// `status` is NULL, or points to NULL or to a live status from this library.
#[no_mangle]
pub unsafe extern "C" fn flowar_status_destroy(status: *mut *mut FlowarStatus) {
    // SAFETY: `status` is NULL, or points to NULL or to a live status, which `new_status` made
    // with `Box::into_raw` (the caller's contract).
    unsafe { crate::destroy(status) }
}
