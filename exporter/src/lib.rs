//! The FlowAR exporter: released checkpoints in, portable ONNX graphs and a manifest out.
//!
//! `checkpoint` reads PyTorch zip and safetensors files without executing pickle code,
//! `vae_checkpoint` finds a VAE's weights (and a diffusers folder's `config.json`),
//! `arch` derives the architecture from key names and shapes, `graphs` builds the four
//! graphs (AR step, flow head, VAE decoder, solver step) with the `onnx` builder, and
//! `convert` writes the model folder atomically. What goes into the folder (file and
//! input/output names, the manifest) is the `flowar-format` crate's contract; the exporter
//! does not depend on the runtime.
pub mod arch;
pub mod checkpoint;
pub mod convert;
pub mod error;
pub mod graphs;
pub mod nn;
pub mod onnx;
pub mod precision;
pub mod preset;
pub mod quantize;
pub mod vae_checkpoint;
pub mod weights;

pub use error::{ExportError, Result};
