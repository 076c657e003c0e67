//! One batch of images to generate, made from the model's defaults
//! ([`Request::with_defaults`]) so the CLI, the benchmark and the C ABI fill in what a
//! caller left out the same way, and checked against the model before any work.

use crate::error::{Error, Result};
use crate::manifest::Manifest;

use super::schedule::time_grid;
use super::Solver;

/// One batch of images to generate.
#[derive(Debug, Clone)]
pub struct Request {
    /// Class id per image.
    pub classes: Vec<usize>,
    /// Global index of each image (its RNG stream); usually `first..first+len`.
    pub image_indices: Vec<u64>,
    pub seed: u64,
    pub cfg: f64,
    pub guidance: f64,
    pub steps: usize,
    /// Solver steps per scale, coarse to fine, in place of `steps` (see
    /// [`Steps`](super::schedule::Steps)); `None`: `steps` at every scale.
    pub scale_steps: Option<Vec<usize>>,
    pub solver: Solver,
    /// Recorded starting noise per scale, `[rows, N_i, C]`, instead of the seeded RNG.
    pub noise: Option<Vec<Vec<f32>>>,
    /// Source tokens to keep, per scale: an edit (in-painting, out-painting, variation)
    /// instead of a generation from scratch; see [`EditPlan`](super::edit::EditPlan).
    pub edit: Option<std::sync::Arc<super::edit::EditPlan>>,
}

impl Request {
    /// No images yet, seed 0, the Euler solver, seeded noise, and the model's sampler
    /// defaults (the released cfg, guidance and steps, or the model card's).
    pub fn with_defaults(m: &Manifest) -> Request {
        Request {
            classes: Vec::new(),
            image_indices: Vec::new(),
            seed: 0,
            cfg: m.sampler.cfg,
            guidance: m.sampler.guidance,
            steps: m.sampler.steps,
            scale_steps: None,
            solver: Solver::Euler,
            noise: None,
            edit: None,
        }
    }

    /// Sets the steps from what a user wrote: one count for every scale, or one per scale.
    pub fn with_steps(mut self, steps: &super::schedule::Steps) -> Request {
        match steps {
            super::schedule::Steps::Uniform(n) => {
                self.steps = *n;
                self.scale_steps = None;
            }
            super::schedule::Steps::PerScale(v) => self.scale_steps = Some(v.clone()),
        }
        self
    }

    /// Steps per scale in place of `steps` (`None`: `steps` at every scale).
    pub fn with_scale_steps(mut self, scale_steps: Option<Vec<usize>>) -> Request {
        self.scale_steps = scale_steps;
        self
    }

    /// The solver steps at `scale`.
    pub fn steps_at(&self, scale: usize) -> usize {
        self.scale_steps
            .as_ref()
            .and_then(|v| v.get(scale).copied())
            .unwrap_or(self.steps)
    }

    /// The steps as a user writes them (`25` or `25,25,20,12,8`), for metadata.
    pub fn steps_text(&self) -> String {
        match &self.scale_steps {
            Some(v) => super::schedule::Steps::PerScale(v.clone()).to_string(),
            None => self.steps.to_string(),
        }
    }

    /// Replaces the defaults the caller set; `None` keeps the model's.
    pub fn with_sampler(
        mut self,
        cfg: Option<f64>,
        guidance: Option<f64>,
        steps: Option<usize>,
    ) -> Request {
        self.cfg = cfg.unwrap_or(self.cfg);
        self.guidance = guidance.unwrap_or(self.guidance);
        self.steps = steps.unwrap_or(self.steps);
        self
    }

    /// Image `i` of class `classes[i]` drawn from RNG stream `first_index + i`. An index
    /// range past `u64::MAX` is a [`Error::BadArgument`].
    pub fn with_images(mut self, classes: Vec<usize>, first_index: u64) -> Result<Request> {
        let n = classes.len() as u64;
        let last = first_index.checked_add(n).ok_or_else(|| {
            Error::BadArgument(format!("first_index {first_index} + {n} images overflows"))
        })?;
        self.image_indices = (first_index..last).collect();
        self.classes = classes;
        Ok(self)
    }

    /// The images at the given global indices, `class_of(index)` each.
    pub fn with_indices(mut self, indices: &[u64], class_of: impl Fn(u64) -> usize) -> Request {
        self.classes = indices.iter().map(|&k| class_of(k)).collect();
        self.image_indices = indices.to_vec();
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Request {
        self.seed = seed;
        self
    }

    pub fn with_solver(mut self, solver: Solver) -> Request {
        self.solver = solver;
        self
    }

    pub fn with_noise(mut self, noise: Option<Vec<Vec<f32>>>) -> Request {
        self.noise = noise;
        self
    }

    /// Teacher-forces the source tokens `plan` keeps (one plan row per image).
    pub fn with_edit(mut self, plan: Option<super::edit::EditPlan>) -> Request {
        self.edit = plan.map(std::sync::Arc::new);
        self
    }

    /// Flow-head rows per call: the images, and their null-class rows when CFG is on.
    pub fn rows(&self) -> usize {
        if self.cfg > 1.0 {
            2 * self.classes.len()
        } else {
            self.classes.len()
        }
    }

    /// Checks the request against the model before any work starts. `batch_limit` is the
    /// largest batch the model's sessions were built for, if any.
    pub fn validate(&self, m: &Manifest, batch_limit: Option<usize>) -> Result<()> {
        if self.classes.is_empty() {
            return Err(Error::BadArgument(
                "no images requested (empty class list)".into(),
            ));
        }
        if self.image_indices.len() != self.classes.len() {
            return Err(Error::BadArgument(format!(
                "{} image indices for {} classes",
                self.image_indices.len(),
                self.classes.len()
            )));
        }
        // The null class is a condition only without guidance (an unconditional edit).
        let unconditional = |c: usize| c == m.null_class && self.cfg <= 1.0;
        if let Some(&c) = self
            .classes
            .iter()
            .find(|&&c| c >= m.num_classes && !unconditional(c))
        {
            return Err(Error::BadArgument(format!(
                "class id {c} is out of range: this model has classes 0..{}",
                m.num_classes - 1
            )));
        }
        if let Some(max) = batch_limit.filter(|&m| self.classes.len() > m) {
            return Err(Error::BadArgument(format!(
                "a batch of {} images exceeds the TensorRT profile's maximum of {max}; load \
                 the pipeline with the GPU option trt_max_batch={} (engines are built per maximum)",
                self.classes.len(),
                self.classes.len()
            )));
        }
        match &self.scale_steps {
            None => {
                if self.steps == 0 {
                    return Err(Error::BadArgument("steps must be at least 1".into()));
                }
                if time_grid(self.steps).len() < 2 {
                    return Err(Error::BadArgument(format!(
                        "{} steps give an empty time grid; use at least 2",
                        self.steps
                    )));
                }
            }
            Some(v) => {
                if v.len() != m.scales.len() {
                    return Err(Error::BadArgument(format!(
                        "a step schedule needs one count per scale: this model has {} scales {:?}, the schedule gives {} ({})",
                        m.scales.len(),
                        m.scales,
                        v.len(),
                        self.steps_text()
                    )));
                }
                if let Some((i, &n)) = v.iter().enumerate().find(|(_, &n)| time_grid(n).len() < 2) {
                    return Err(Error::BadArgument(format!(
                        "step schedule {}: {n} step(s) at scale {i} ({}x{}) give an empty time grid; use at least 2",
                        self.steps_text(),
                        m.scales[i],
                        m.scales[i]
                    )));
                }
            }
        }
        if !(self.cfg.is_finite() && self.cfg >= 1.0) {
            return Err(Error::BadArgument(format!(
                "cfg {} must be a number >= 1 (1 turns guidance off)",
                self.cfg
            )));
        }
        if !(0.0..=1.0).contains(&self.guidance) {
            return Err(Error::BadArgument(format!(
                "guidance {} must be within [0, 1]",
                self.guidance
            )));
        }
        if let Some(plan) = &self.edit {
            plan.validate(self.classes.len(), &m.scales, m.latent_channels)?;
        }
        if let Some(noise) = &self.noise {
            let rows = self.rows();
            for (i, s) in m.scales.iter().enumerate() {
                let want = rows * s * s * m.latent_channels;
                if noise.get(i).map(|n| n.len()) != Some(want) {
                    return Err(Error::BadArgument(format!(
                        "recorded noise for scale {i} must hold [{rows}, {}, {}] values",
                        s * s,
                        m.latent_channels
                    )));
                }
            }
        }
        Ok(())
    }
}
