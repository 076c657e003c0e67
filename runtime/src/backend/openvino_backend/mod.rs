//! OpenVINO backend (through the `openvino` crate, its C library loaded at run time).
//!
//! OpenVINO's C library is loaded once per process and cannot be swapped afterwards (the
//! `openvino-sys` crate keeps it in a process-global). The first call that needs it
//! ([`OpenVinoSession::open`], [`available`]) picks it in this order:
//!
//! 1. [`BackendOptions::openvino_lib`] (`--openvino-lib`): authoritative, no fallback;
//! 2. the `OPENVINO_LIB_PATH` environment variable: authoritative as well;
//! 3. `.venv/lib/python3*/site-packages/openvino/libs/` relative to the current directory
//!    (the project's own environment, where `scripts/test.sh` installs it);
//! 4. the `openvino/libs/` folder of the package `python3` on PATH imports.
//!
//! In a folder, `libopenvino_c.so.<version>` is preferred (highest version), then
//! `libopenvino_c.so`. Every failure becomes
//! [`Error::ProviderUnavailable`](crate::Error::ProviderUnavailable), never a panic.
//!
//! Graphs run on OpenVINO's CPU plugin with float32 inference precision unless a session
//! asks for another ([`BackendOptions::inference_precision`]): bfloat16 lives in the graph
//! (its weight MatMuls), not in a global hint that would also round norms and softmax.
//! OpenVINO computes float64 in float32, so float64 graphs (the solver step) run on the
//! host instead ([`crate::backend::Provider::for_float64`]).
//!
//! - [`library`]: finding and loading the library, and what the CPU can compute;
//! - [`session`]: compiled graphs, one per input shape, and their runs;
//! - [`value`]: host tensors to and from OpenVINO tensors.
//!
//! [`BackendOptions::openvino_lib`]: super::BackendOptions::openvino_lib
//! [`BackendOptions::inference_precision`]: super::BackendOptions::inference_precision

pub mod library;
pub mod session;
pub mod value;

pub use library::{available, cpu_capabilities, CpuCapabilities};
pub use session::OpenVinoSession;

const BACKEND: &str = "openvino";
