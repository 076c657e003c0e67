//! The FlowAR sampler, on top of a loaded [`Model`](crate::model::Model): per scale the AR
//! condition, the ODE from noise to tokens with classifier-free guidance, upsampling to the
//! next scale, and the VAE decode at the end. The semantics are the reference's, written
//! down in `docs/flowar-reference.md` (section 6 for the sampler).
//!
//! - [`request`]: what to generate, with the model's defaults, and its validation;
//! - [`schedule`]: the time grid per scale and the CFG ramp over scales;
//! - [`noise`]: seeded starting noise per image (stream `k` for image `k`), or recorded noise;
//! - [`edit`]: the source tokens an edit keeps per scale, and how they are forced;
//! - [`ode`]: one scale's ODE on the device (Euler and Heun solvers);
//! - [`upsample`]: the bicubic-then-area upsampling between scales;
//! - [`scale_loop`]: the coarse-to-fine loop that ties them together.

pub mod edit;
pub mod noise;
pub mod ode;
pub mod request;
pub mod scale_loop;
pub mod schedule;
pub mod upsample;

use std::time::Duration;

pub use edit::{EditPlan, Mask};
pub use request::Request;
pub use scale_loop::Output;

/// The ODE solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Solver {
    /// First order; what the reference uses.
    #[default]
    Euler,
    /// Second order (Heun's method): two velocity calls per step, closer to the exact ODE
    /// solution for the same number of steps.
    Heun,
}

impl Solver {
    pub fn name(self) -> &'static str {
        match self {
            Solver::Euler => "euler",
            Solver::Heun => "heun",
        }
    }
}

impl std::str::FromStr for Solver {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "euler" => Ok(Solver::Euler),
            "heun" => Ok(Solver::Heun),
            _ => Err(crate::error::Error::BadArgument(format!(
                "unknown solver `{s}` (expected euler or heun)"
            ))),
        }
    }
}

/// Where the sampler is, for progress displays. Returning `false` from the callback cancels.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub scale: usize,
    pub scales: usize,
    pub step: usize,
    pub steps: usize,
}

/// Time spent per stage.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageTimes {
    pub ar: Duration,
    /// AR time per scale, coarse to fine (sums to `ar`).
    pub ar_per_scale: Vec<Duration>,
    /// Flow-head calls.
    pub flow: Duration,
    pub flow_calls: usize,
    /// Rows the flow head computed, over all calls: the images, twice for guided calls
    /// (conditional and null rows). The work done, whatever the speed.
    pub flow_rows: usize,
    /// The solver-step graph: CFG combination, state update, the non-finite check.
    pub solver: Duration,
    /// Reading each scale's tokens back, upsampling them and sending them to the next scale.
    pub upsample: Duration,
    pub vae: Duration,
}

impl StageTimes {
    pub fn add(&mut self, o: &StageTimes) {
        self.ar += o.ar;
        if self.ar_per_scale.len() < o.ar_per_scale.len() {
            self.ar_per_scale
                .resize(o.ar_per_scale.len(), Duration::ZERO);
        }
        for (a, b) in self.ar_per_scale.iter_mut().zip(&o.ar_per_scale) {
            *a += *b;
        }
        self.flow += o.flow;
        self.flow_calls += o.flow_calls;
        self.flow_rows += o.flow_rows;
        self.solver += o.solver;
        self.upsample += o.upsample;
        self.vae += o.vae;
    }
}
