//! The FlowAR scale loop: AR condition per scale, the ODE from noise to tokens with CFG,
//! upsampling to the next scale, and the VAE decode (reference spec, section 6).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::backend::{BackendOptions, Resident};
use crate::error::{Error, Result};
use crate::image::{to_rgb8, RgbImage};
use crate::manifest::Manifest;
use crate::model::{KvCache, Model};
use crate::noise;
use crate::ode::ScaleOde;
use crate::provider::{resolve, ProviderChoice, Resolved};
use crate::schedule::{cfg_at_scale, time_grid};
use crate::tensor::Tensor;
use crate::upsample::next_scale_tokens;

/// The ODE solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solver {
    /// First order; what the reference uses.
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
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "euler" => Ok(Solver::Euler),
            "heun" => Ok(Solver::Heun),
            _ => Err(Error::BadArgument(format!(
                "unknown solver `{s}` (expected euler or heun)"
            ))),
        }
    }
}

/// How to load a pipeline.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    pub provider: ProviderChoice,
    pub backend: BackendOptions,
}

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
    pub solver: Solver,
    /// Recorded starting noise per scale, `[rows, N_i, C]`, instead of the seeded RNG.
    pub noise: Option<Vec<Vec<f32>>>,
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
        self.solver += o.solver;
        self.upsample += o.upsample;
        self.vae += o.vae;
    }
}

/// Generated images and what produced them.
pub struct Output {
    pub images: Vec<RgbImage>,
    /// Final latents `[batch, C, G, G]`.
    pub tokens: Vec<f32>,
    /// Decoded images `[batch, 3, H, W]` before quantisation.
    pub image: Vec<f32>,
    pub times: StageTimes,
}

pub struct Pipeline {
    model: Model,
    resolved: Resolved,
    /// Largest batch the TensorRT profiles were built for (`None` on other providers).
    trt_max_batch: Option<usize>,
}

impl Pipeline {
    /// Loads `dir` on the provider `options` ask for (see [`ProviderChoice`]).
    pub fn load(dir: &Path, options: &PipelineOptions) -> Result<Pipeline> {
        let resolved = resolve(options.provider, &options.backend)?;
        let model = Model::load(dir, resolved.provider, &options.backend)?;
        let trt_max_batch = (resolved.provider == crate::backend::Provider::TensorRt)
            .then_some(options.backend.gpu.trt_max_batch);
        Ok(Pipeline {
            model,
            resolved,
            trt_max_batch,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.model.manifest
    }

    /// The provider that runs the graphs and why it was chosen.
    pub fn provider(&self) -> &Resolved {
        &self.resolved
    }

    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    pub fn load_time(&self) -> Duration {
        self.model.load_time
    }

    /// Checks a request against the model before any work starts.
    pub fn validate(&self, req: &Request) -> Result<()> {
        let m = &self.model.manifest;
        if req.classes.is_empty() {
            return Err(Error::BadArgument(
                "no images requested (empty class list)".into(),
            ));
        }
        if req.image_indices.len() != req.classes.len() {
            return Err(Error::BadArgument(format!(
                "{} image indices for {} classes",
                req.image_indices.len(),
                req.classes.len()
            )));
        }
        if let Some(&c) = req.classes.iter().find(|&&c| c >= m.num_classes) {
            return Err(Error::BadArgument(format!(
                "class id {c} is out of range: this model has classes 0..{}",
                m.num_classes - 1
            )));
        }
        if let Some(max) = self.trt_max_batch.filter(|&m| req.classes.len() > m) {
            return Err(Error::BadArgument(format!(
                "a batch of {} images exceeds the TensorRT profile's maximum of {max}; load \
                 the pipeline with the GPU option trt_max_batch={} (engines are built per maximum)",
                req.classes.len(),
                req.classes.len()
            )));
        }
        if req.steps == 0 {
            return Err(Error::BadArgument("steps must be at least 1".into()));
        }
        if time_grid(req.steps).len() < 2 {
            return Err(Error::BadArgument(format!(
                "{} steps give an empty time grid; use at least 2",
                req.steps
            )));
        }
        if !(req.cfg.is_finite() && req.cfg >= 1.0) {
            return Err(Error::BadArgument(format!(
                "cfg {} must be a number >= 1 (1 turns guidance off)",
                req.cfg
            )));
        }
        if !(0.0..=1.0).contains(&req.guidance) {
            return Err(Error::BadArgument(format!(
                "guidance {} must be within [0, 1]",
                req.guidance
            )));
        }
        if let Some(noise) = &req.noise {
            let rows = self.rows(req);
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

    fn rows(&self, req: &Request) -> usize {
        if req.cfg > 1.0 {
            2 * req.classes.len()
        } else {
            req.classes.len()
        }
    }

    /// Runs the whole scale loop for one batch. `progress` is called after every solver step.
    pub fn generate(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Output> {
        self.validate(req)?;
        let m = self.model.manifest.clone();
        let b = req.classes.len();
        let cfg_on = req.cfg > 1.0;
        let rows = self.rows(req);
        let c = m.latent_channels;
        let n_scales = m.scales.len();
        let grid = m.final_grid();
        let noise = match &req.noise {
            Some(n) => n.clone(),
            None => noise::seeded(req.seed, &req.image_indices, &m.scales, c, cfg_on),
        };
        let mut labels: Vec<i64> = req.classes.iter().map(|&c| c as i64).collect();
        if cfg_on {
            labels.extend(std::iter::repeat_n(m.null_class as i64, b));
        }
        let times = time_grid(req.steps);
        let n_steps = times.len() - 1;
        let mut st = StageTimes::default();
        let mut cache = KvCache::empty(&m, rows);
        let mut tokens_in = Resident::Host(Tensor::f32(vec![rows, 1, c], vec![0.0; rows * c]));
        let mut cond = Vec::new();

        for (i, &side) in m.scales.iter().enumerate() {
            let n = side * side;
            let t0 = Instant::now();
            let z = self.model.ar_step(i, &labels, &tokens_in, &mut cache)?;
            let ar_time = t0.elapsed();
            st.ar += ar_time;
            st.ar_per_scale.push(ar_time);
            let w = cfg_at_scale(req.cfg, i, n_scales);
            let mut ode = ScaleOde::new(i, b, cfg_on, w, req.guidance, &z);
            let mut state = ode.initial_state(&self.model, &noise[i], n, c)?;
            for step in 0..n_steps {
                let span = (times[step], times[step + 1]);
                state = ode.step(&mut self.model, state, req.solver, span, step, &mut st)?;
                if !progress(&Progress {
                    scale: i,
                    scales: n_scales,
                    step: step + 1,
                    steps: n_steps,
                }) {
                    return Err(Error::Cancelled);
                }
            }
            // The one read back per scale: the tokens, for upsampling and the VAE.
            let t2 = Instant::now();
            let x = state.x.to_host()?.into_f64().ok_or_else(|| Error::Model {
                path: self.model.dir.clone(),
                reason: "the solver step's `x_next` is not float64".into(),
            })?;
            cond = x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            if i + 1 < n_scales {
                let next = m.scales[i + 1];
                let up = next_scale_tokens(&cond, b, c, side, grid, next);
                let mut data = up.clone();
                if cfg_on {
                    data.extend_from_slice(&up);
                }
                tokens_in = self
                    .model
                    .upload(&Tensor::f32(vec![rows, next * next, c], data))?;
            }
            st.upsample += t2.elapsed();
        }

        // [b, N, C] tokens -> [b, C, G, G] latents.
        let nn = grid * grid;
        let mut latent = vec![0f32; b * c * nn];
        for bi in 0..b {
            for p in 0..nn {
                for ch in 0..c {
                    latent[(bi * c + ch) * nn + p] = cond[(bi * nn + p) * c + ch];
                }
            }
        }
        let t3 = Instant::now();
        let img = self
            .model
            .decode(&Tensor::f32(vec![b, c, grid, grid], latent.clone()))?;
        st.vae += t3.elapsed();
        let (h, wd) = (img.shape[2], img.shape[3]);
        let image = img.into_f32().expect("f32 image");
        if let Some(bad) = image.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                scale: n_scales,
                step: 0,
                what: format!("VAE output element {bad}"),
            });
        }
        let images = to_rgb8(&image, b, h, wd);
        Ok(Output {
            images,
            tokens: latent,
            image,
            times: st,
        })
    }
}
