//! The FlowAR runtime: loads an exported model folder and runs the scale loop.
//!
//! Layers, each knowing only the ones below it:
//! - [`backend`]: onnxruntime and tract sessions behind one trait; knows ONNX graphs, not FlowAR;
//! - [`model`]: the model folder's four graphs as typed calls, and what TensorRT is told about them;
//! - [`sampler`]: the scale loop, ODE solvers, schedule, noise and upsampling;
//! - [`pipeline`]: a model on a chosen [`provider`], ready to generate.
//!
//! [`cache`] keeps OpenVINO's compiled graphs and TensorRT's engines on disk, under a size cap.
//!
//! Tool code sits beside them: [`verify`] (parity against reference outputs), [`image`]
//! (PNG output), [`sample_set`] (a set's `NNNNNN.png` files and their settings) and, behind the `clap` feature, `cli_args`. The model folder's format
//! (manifest and graph names) is the `flowar-format` crate, re-exported as [`manifest`].
//!
//! ```no_run
//! use flowar_runtime::{Pipeline, PipelineOptions};
//! let mut pipe = Pipeline::load("models/shapes10/converted".as_ref(), &PipelineOptions::default())?;
//! let req = pipe.request().with_images(vec![0, 1], 0)?;
//! let out = pipe.generate(&req, &mut |_| true)?;
//! flowar_runtime::image::save_png("0.png".as_ref(), &out.images[0], &[])?;
//! # Ok::<(), flowar_runtime::Error>(())
//! ```
pub mod backend;
pub mod cache;
#[cfg(feature = "clap")]
pub mod cli_args;
pub mod edit_input;
pub mod error;
pub mod image;
pub mod model;
pub mod pipeline;
pub mod provider;
pub mod rope;
pub mod sample_set;
pub mod sampler;
pub mod tensor;
pub mod test_support;
pub mod verify;

pub use backend::Provider;
pub use error::{Error, Result};
pub use flowar_format::atomic_file;
pub use flowar_format::manifest;
pub use pipeline::{Pipeline, PipelineOptions};
pub use provider::ProviderChoice;
pub use sampler::{EditPlan, Mask, Output, Progress, Request, Solver, StageTimes};
