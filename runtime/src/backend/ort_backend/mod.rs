//! ONNX Runtime backend (through the `ort` crate, loaded dynamically).
//!
//! The ONNX Runtime shared library is loaded once per process and can never be swapped
//! afterwards (the `ort` crate keeps it in a process-global). The first call that needs it
//! ([`OrtSession::open`], [`ort_available`], [`provider_available`]) picks it with this search
//! order:
//!
//! 1. [`BackendOptions::ort_lib`] (`--ort-lib`): authoritative, no fallback when it fails;
//! 2. the `ORT_DYLIB_PATH` environment variable: authoritative as well;
//! 3. the `onnxruntime/capi/` folder of the Python package reported by
//!    `python3 -c "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"`;
//! 4. `.venv/lib/python3*/site-packages/onnxruntime/capi/` relative to the current directory.
//!
//! In a folder, `libonnxruntime.so.<version>` is preferred (highest version), then
//! `libonnxruntime.so`. Nothing here panics when the library is missing or unusable: every
//! failure becomes [`Error::ProviderUnavailable`](crate::Error::ProviderUnavailable).
//!
//! - [`library`]: finding and loading the library;
//! - [`providers`]: which execution providers work, and registering CUDA and TensorRT;
//! - [`session`]: sessions, host runs and I/O-bound resident runs;
//! - [`value`]: host tensors to and from onnxruntime values.
//!
//! [`BackendOptions::ort_lib`]: super::BackendOptions::ort_lib

pub mod library;
pub mod providers;
pub mod session;
pub mod value;

pub use library::{ort_available, tensorrt_libs_dir};
pub use providers::{provider_available, provider_available_with, tensorrt_version};
pub use session::OrtSession;

const BACKEND: &str = "onnxruntime";
