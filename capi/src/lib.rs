//! `libflowar`: the C ABI of the FlowAR runtime.
//!
//! Built as a `cdylib` (`libflowar.so`) and a `staticlib` (`libflowar.a`); the header is
//! `include/flowar.h`, generated from this crate by cbindgen (`capi/cbindgen.toml`) and
//! checked in (the `c_api` test fails when it is stale; `FLOWAR_BLESS=1` rewrites it).
//!
//! Conventions, for every exported function:
//! - Fallible functions return a `FlowarStatus*`: NULL on success, else an error object the
//!   caller owns and frees with `flowar_status_destroy`.
//! - Handles are opaque; each `*_create` has a `*_destroy(T**)` that accepts NULL (or a
//!   pointer to NULL) and sets the caller's pointer to NULL.
//! - NULL or out-of-range arguments are errors (`FLOWAR_CODE_BAD_ARGUMENT`), never UB;
//!   what cannot be checked (dangling or foreign pointers, buffers shorter than the length
//!   the caller states) is the caller's responsibility.
//! - No Rust panic unwinds into C: each function catches it and reports
//!   `FLOWAR_CODE_INTERNAL`.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use flowar_runtime::Error;

mod options;
mod pipeline;
mod request;
mod status;

pub use options::*;
pub use pipeline::*;
pub use request::*;
pub use status::*;

/// The library version (the Cargo package version, e.g. "0.1.0"), as a static string that
/// must not be freed.
#[no_mangle]
pub extern "C" fn flowar_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Runs `f`, turning its error or panic into a status; `func` prefixes the message.
pub(crate) fn guard(func: &str, f: impl FnOnce() -> Result<(), Error>) -> *mut FlowarStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(e)) => status::from_error(func, &e),
        Err(payload) => status::from_panic(func, payload.as_ref()),
    }
}

/// Runs `f` (which cannot report an error) and swallows a panic, returning `fallback`.
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

pub(crate) fn bad(msg: impl Into<String>) -> Error {
    Error::BadArgument(msg.into())
}

/// A NUL-terminated UTF-8 string argument; `what` names it in errors.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(bad(format!("`{what}` is NULL")));
    }
    // SAFETY: `p` is not NULL (checked above), so it points to a NUL-terminated string that
    // outlives `'a` (the caller's contract).
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|e| bad(format!("`{what}` is not valid UTF-8 ({e})")))
}

/// Frees `*handle` (if any) and sets it to NULL.
///
/// # Safety
/// `handle` is NULL or points to NULL or to a pointer from `Box::into_raw` not yet freed.
pub(crate) unsafe fn destroy<T>(handle: *mut *mut T) {
    // SAFETY: `handle` is not NULL (checked first), so it is valid to read (the caller's contract).
    if handle.is_null() || unsafe { (*handle).is_null() } {
        return;
    }
    // SAFETY: `handle` is not NULL, so it is valid to write (the caller's contract).
    let p = std::mem::replace(unsafe { &mut *handle }, std::ptr::null_mut());
    // SAFETY: `p` is a non-NULL pointer from `Box::into_raw` not yet freed (the caller's
    // contract); `*handle` is now NULL, so it cannot be freed twice through it.
    guard_value((), || drop(unsafe { Box::from_raw(p) }));
}

/// Stores a new handle in `*out`, which must not be NULL.
///
/// # Safety
/// `out` is not NULL and valid for a write (callers check it with `out_handle` first).
pub(crate) unsafe fn put<T>(out: *mut *mut T, value: T) {
    // SAFETY: `out` is not NULL and valid for a write (the caller's contract).
    unsafe { *out = Box::into_raw(Box::new(value)) };
}

/// Checks an out-parameter and sets it to NULL so a failed call leaves no stale handle.
///
/// # Safety
/// `out` is NULL or valid for a write.
pub(crate) unsafe fn out_handle<T>(out: *mut *mut T, what: &str) -> Result<(), Error> {
    if out.is_null() {
        return Err(bad(format!("`{what}` (the out-parameter) is NULL")));
    }
    // SAFETY: `out` is not NULL (checked above), so it is valid for a write (the contract).
    unsafe { *out = std::ptr::null_mut() };
    Ok(())
}

/// A value set by name: the string, integer and float setters all land here.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
}

impl<'a> Value<'a> {
    pub(crate) fn int(self, name: &str) -> Result<i64, Error> {
        match self {
            Value::Int(i) => Ok(i),
            Value::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{name}` must be an integer, got \"{s}\""))),
            Value::Float(f) => Err(bad(format!("`{name}` must be an integer, got {f}"))),
        }
    }

    pub(crate) fn uint(self, name: &str) -> Result<u64, Error> {
        match self {
            Value::Str(s) => s.trim().parse().map_err(|_| {
                bad(format!(
                    "`{name}` must be a non-negative integer, got \"{s}\""
                ))
            }),
            v => {
                let i = v.int(name)?;
                u64::try_from(i).map_err(|_| bad(format!("`{name}` must be non-negative, got {i}")))
            }
        }
    }

    pub(crate) fn float(self, name: &str) -> Result<f64, Error> {
        let f = match self {
            Value::Float(f) => f,
            Value::Int(i) => i as f64,
            Value::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{name}` must be a number, got \"{s}\"")))?,
        };
        if f.is_finite() {
            Ok(f)
        } else {
            Err(bad(format!("`{name}` must be a finite number, got {f}")))
        }
    }

    /// A switch: the integer 0 or 1, or the string "0", "1", "false" or "true".
    pub(crate) fn bool(self, name: &str) -> Result<bool, Error> {
        match self {
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            Value::Str(s) => match s.trim() {
                "0" | "false" => Ok(false),
                "1" | "true" => Ok(true),
                _ => Err(bad(format!(
                    "`{name}` is a switch: 0 / 1 (or \"false\" / \"true\"), got \"{s}\""
                ))),
            },
            Value::Int(i) => Err(bad(format!(
                "`{name}` is a switch: 0 / 1 (or \"false\" / \"true\"), got {i}"
            ))),
            Value::Float(f) => Err(bad(format!(
                "`{name}` is a switch: 0 / 1 (or \"false\" / \"true\"), got {f}"
            ))),
        }
    }

    pub(crate) fn str(self, name: &str) -> Result<&'a str, Error> {
        match self {
            Value::Str(s) => Ok(s),
            _ => Err(bad(format!(
                "`{name}` takes a string: set it with the string setter"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    /// Reads and frees a status.
    ///
    /// # Safety
    /// `st` is NULL or a live status from this library, not used after this call.
    unsafe fn take(st: *mut FlowarStatus) -> (FlowarCode, String) {
        // SAFETY: `st` is NULL or live (this function's contract).
        let code = unsafe { flowar_status_code(st) };
        // SAFETY: `st` is NULL or live; its message is a NUL-terminated string never NULL,
        // valid until the destroy below.
        let msg = unsafe { CStr::from_ptr(flowar_status_message(st)) }
            .to_string_lossy()
            .into_owned();
        let mut st = st;
        // SAFETY: `st` is NULL or live and not used again (this function's contract).
        unsafe { flowar_status_destroy(&mut st) };
        assert!(st.is_null());
        (code, msg)
    }

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let st = guard("flowar_test", || panic!("boom {}", 42));
        // SAFETY: `guard` returned a fresh status, used only here.
        let (code, msg) = unsafe { take(st) };
        assert_eq!(code, FlowarCode::Internal);
        assert!(msg.starts_with("flowar_test: internal error") && msg.ends_with("boom 42"));
    }

    #[test]
    fn errors_map_to_codes_and_success_is_null() {
        assert!(guard("f", || Ok(())).is_null());
        let cases = [
            (Error::BadArgument("x".into()), FlowarCode::BadArgument),
            (
                Error::io("p".as_ref(), std::io::Error::other("x")),
                FlowarCode::Io,
            ),
            (
                Error::Model {
                    path: "p".into(),
                    reason: "x".into(),
                },
                FlowarCode::Model,
            ),
            (
                Error::ProviderUnavailable {
                    provider: "cuda".into(),
                    reason: "x".into(),
                    source: None,
                },
                FlowarCode::ProviderUnavailable,
            ),
            (Error::Cancelled, FlowarCode::Cancelled),
            (
                Error::Backend {
                    backend: "b".into(),
                    graph: "g".into(),
                    reason: "x".into(),
                    source: None,
                },
                FlowarCode::Internal,
            ),
            (
                Error::Poisoned {
                    what: "this pipeline".into(),
                },
                FlowarCode::Internal,
            ),
            (
                Error::NonFinite {
                    scale: 0,
                    step: 0,
                    what: "x".into(),
                },
                FlowarCode::Model,
            ),
        ];
        for (e, want) in cases {
            // SAFETY: `guard` returns a fresh status, used only here.
            let (code, msg) = unsafe { take(guard("f", || Err(e))) };
            assert_eq!(code, want, "{msg}");
            assert!(msg.starts_with("f: "), "{msg}");
        }
    }

    #[test]
    fn messages_with_nul_bytes_survive() {
        let st = guard("f", || Err(bad("a\0b")));
        // SAFETY: `guard` returned a fresh status, used only here.
        let (_, msg) = unsafe { take(st) };
        assert_eq!(msg, "f: a\u{FFFD}b");
    }

    #[test]
    fn values_parse_strictly() {
        assert_eq!(Value::Str(" 7 ").uint("n").unwrap(), 7);
        assert!(Value::Int(-1).uint("n").is_err());
        assert!(Value::Float(1.5).int("n").is_err());
        assert_eq!(Value::Int(2).float("x").unwrap(), 2.0);
        assert!(Value::Float(f64::INFINITY).float("x").is_err());
        assert!(Value::Str("1e400").float("x").is_err());
        assert!(Value::Int(1).str("s").is_err());
        assert!(Value::Str(" true ").bool("b").unwrap());
        assert!(!Value::Int(0).bool("b").unwrap());
        assert!(Value::Int(2).bool("b").is_err());
        assert!(Value::Str("yes").bool("b").is_err());
        assert!(Value::Float(1.0).bool("b").is_err());
    }
}
