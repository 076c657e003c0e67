//! The FlowAR exporter: released checkpoints in, portable ONNX graphs and a manifest out.
//!
//! `checkpoint` reads PyTorch zip and safetensors files without executing pickle code,
//! `arch` derives the architecture from key names and shapes, `graphs` builds the AR
//! step, flow head and VAE decoder with the `onnx` builder, and `convert` writes the
//! model folder atomically.
pub mod arch;
pub mod checkpoint;
pub mod convert;
pub mod error;
pub mod graphs;
pub mod nn;
pub mod onnx;
pub mod preset;
pub mod weights;

pub use error::{ExportError, Result};
