//! The model folder: the one thing that passes between the exporter and the runtime.
//!
//! A model folder holds four ONNX graphs (AR step, flow head, VAE decoder, solver step)
//! and `manifest.json`. This crate owns that contract: the manifest's types and
//! validation, its format version, the graphs' file names, their input and output names,
//! and the symbolic dimensions those inputs are declared with. The exporter writes it, the
//! runtime reads it, and neither depends on the other.
pub mod atomic_file;
pub mod error;
pub mod io;
pub mod manifest;

pub use error::{FormatError, Result};
pub use io::SymbolicDim;
pub use manifest::{GraphRole, Manifest, FORMAT_VERSION, MANIFEST_FILE};
