//! The FlowAR runtime: loads an exported model folder and runs the scale loop.
//!
//! ```no_run
//! use flowar_runtime::{Pipeline, PipelineOptions, Request, Solver};
//! let mut pipe = Pipeline::load("models/shapes10/converted".as_ref(), &PipelineOptions::default())?;
//! let m = pipe.manifest().clone();
//! let req = Request {
//!     classes: vec![0, 1],
//!     image_indices: vec![0, 1],
//!     seed: 0,
//!     cfg: m.sampler.cfg,
//!     guidance: m.sampler.guidance,
//!     steps: m.sampler.steps,
//!     solver: Solver::Euler,
//!     noise: None,
//! };
//! let out = pipe.generate(&req, &mut |_| true)?;
//! flowar_runtime::image::save_png("0.png".as_ref(), &out.images[0], &[])?;
//! # Ok::<(), flowar_runtime::Error>(())
//! ```
pub mod backend;
#[cfg(feature = "clap")]
pub mod cli_args;
pub mod error;
pub mod image;
pub mod manifest;
pub mod model;
pub mod noise;
pub mod ode;
pub mod pipeline;
pub mod provider;
pub mod rope;
pub mod schedule;
pub mod tensor;
pub mod upsample;
pub mod verify;

pub use backend::Provider;
pub use error::{Error, Result};
pub use pipeline::{Output, Pipeline, PipelineOptions, Progress, Request, Solver, StageTimes};
pub use provider::ProviderChoice;
