//! `flowar._flowar.Pipeline`: a model folder loaded on a provider. Generation runs with
//! the GIL released; every solver step it takes the GIL back briefly to call the progress
//! callback and to notice Ctrl-C, and either stops the run.
//!
//! Lock order: the Pipeline's mutex is only ever taken with the GIL released (inside
//! `py.detach`). A thread holding the mutex takes the GIL for its progress callback, so
//! one waiting for the mutex while holding the GIL would deadlock the two.

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict};

use flowar_runtime::backend::gpu::GpuOptions;
use flowar_runtime::backend::BackendOptions;
use flowar_runtime::sampler::schedule::Steps;
use flowar_runtime::{sample_set, Error, PipelineOptions, Request};

use crate::errors;

/// A class given by id or by name.
#[derive(FromPyObject)]
pub enum ClassArg {
    Id(i64),
    Name(String),
}

/// Solver steps: one count, one per scale, or the CLI's text (`"25,25,20,12,8"`).
#[derive(FromPyObject)]
pub enum StepsArg {
    Count(i64),
    PerScale(Vec<i64>),
    Text(String),
}

impl StepsArg {
    fn parse(self) -> Result<Steps, Error> {
        let count = |n: i64| {
            usize::try_from(n)
                .map_err(|_| Error::BadArgument(format!("steps must be at least 1, got {n}")))
        };
        Ok(match self {
            StepsArg::Count(n) => Steps::Uniform(count(n)?),
            StepsArg::PerScale(v) => {
                Steps::PerScale(v.into_iter().map(count).collect::<Result<_, _>>()?)
            }
            StepsArg::Text(s) => s.parse()?,
        })
    }
}

/// Where the sampler is, passed to a progress callback after every solver step.
#[pyclass(frozen, module = "flowar", get_all)]
#[derive(Clone, Copy)]
pub struct Progress {
    /// Batch number within this call, from 0.
    pub batch: usize,
    /// How many batches this call runs.
    pub batches: usize,
    /// Scale number, coarse to fine, from 0.
    pub scale: usize,
    pub scales: usize,
    /// Solver step within the scale, from 1.
    pub step: usize,
    pub steps: usize,
}

#[pymethods]
impl Progress {
    fn __repr__(&self) -> String {
        format!(
            "Progress(batch={}/{}, scale={}/{}, step={}/{})",
            self.batch + 1,
            self.batches,
            self.scale + 1,
            self.scales,
            self.step,
            self.steps
        )
    }
}

/// The request for `classes` at `indices` with the caller's settings over the model's.
#[allow(clippy::too_many_arguments)]
pub fn request(
    m: &flowar_runtime::manifest::Manifest,
    classes: Vec<ClassArg>,
    indices: Vec<u64>,
    seed: u64,
    cfg: Option<f64>,
    guidance: Option<f64>,
    steps: Option<StepsArg>,
    solver: &str,
) -> Result<Request, Error> {
    let classes = classes
        .into_iter()
        .map(|c| match c {
            ClassArg::Id(i) => usize::try_from(i).map_err(|_| {
                Error::BadArgument(format!("class id {i} is out of range: ids are 0 or more"))
            }),
            ClassArg::Name(name) => Ok(m.class_id(&name)?),
        })
        .collect::<Result<Vec<usize>, Error>>()?;
    if classes.len() != indices.len() {
        return Err(Error::BadArgument(format!(
            "{} classes for {} image indices",
            classes.len(),
            indices.len()
        )));
    }
    let mut req = Request::with_defaults(m)
        .with_sampler(cfg, guidance, None)
        .with_seed(seed)
        .with_solver(solver.parse()?);
    if let Some(s) = steps {
        req = req.with_steps(&s.parse()?);
    }
    Ok(Request {
        classes,
        image_indices: indices,
        ..req
    })
}

/// Takes each batch's request and its images as they are generated.
type BatchSink<'a> =
    dyn FnMut(&Request, Vec<flowar_runtime::image::RgbImage>) -> Result<(), Error> + Send + 'a;

#[pyclass(frozen, module = "flowar._flowar")]
pub struct Pipeline {
    /// Taken only with the GIL released (see the module's lock order).
    inner: Mutex<flowar_runtime::Pipeline>,
    /// A copy of the pipeline's manifest, readable without the mutex.
    manifest: flowar_runtime::manifest::Manifest,
    manifest_json: String,
    provider: String,
    provider_reason: String,
    model_dir: PathBuf,
    /// Output folders already swept of killed writers' temporaries: a Ray worker calls
    /// `generate_to` once a batch into a folder that grows to 50,000 images, and one
    /// listing per folder is enough. Held only briefly, never while waiting for the GIL.
    swept: Mutex<std::collections::HashSet<PathBuf>>,
}

impl Pipeline {
    /// Call only inside `py.detach` (see the module's lock order).
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, flowar_runtime::Pipeline>, Error> {
        self.inner.lock().map_err(|_| Error::Poisoned {
            what: "this Pipeline".into(),
        })
    }

    /// Runs `req` in batches of `batch_size` with the GIL released; `sink` takes each
    /// batch's request and images. Returns the first Python error (a callback's, or
    /// `KeyboardInterrupt`) ahead of the runtime's `Cancelled`.
    fn run_batches(
        &self,
        py: Python<'_>,
        req: &Request,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
        sink: &mut BatchSink<'_>,
    ) -> PyResult<()> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let batches = req.classes.len().div_ceil(batch_size);
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| -> Result<(), Error> {
            let mut pipe = self.lock()?;
            pipe.validate(req)?;
            for (batch, (ix, cl)) in req
                .image_indices
                .chunks(batch_size)
                .zip(req.classes.chunks(batch_size))
                .enumerate()
            {
                let part = Request {
                    classes: cl.to_vec(),
                    image_indices: ix.to_vec(),
                    ..req.clone()
                };
                let out = pipe.generate(&part, &mut |p| {
                    Python::attach(|py| {
                        if let Err(e) = py.check_signals() {
                            raised = Some(e);
                            return false;
                        }
                        let Some(cb) = &progress else { return true };
                        let at = Progress {
                            batch,
                            batches,
                            scale: p.scale,
                            scales: p.scales,
                            step: p.step,
                            steps: p.steps,
                        };
                        match cb.call1(py, (at,)) {
                            // Only an explicit False stops; None (no return) goes on.
                            Ok(v) => !v.bind(py).is(&*pyo3::types::PyBool::new(py, false)),
                            Err(e) => {
                                raised = Some(e);
                                false
                            }
                        }
                    })
                })?;
                sink(&part, out.images)?;
            }
            Ok(())
        });
        match (result, raised) {
            (Err(Error::Cancelled), Some(e)) => Err(e),
            (r, _) => r.map_err(errors::runtime),
        }
    }
}

#[pymethods]
impl Pipeline {
    #[new]
    #[pyo3(signature = (model_dir, provider="auto", threads=None, gpu=None, device_id=0, ort_lib=None, openvino_lib=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        provider: &str,
        threads: Option<usize>,
        gpu: Option<Bound<'_, PyDict>>,
        device_id: i32,
        ort_lib: Option<PathBuf>,
        openvino_lib: Option<PathBuf>,
    ) -> PyResult<Pipeline> {
        if threads == Some(0) {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        if device_id < 0 {
            return Err(PyValueError::new_err(format!(
                "device_id must be 0 or more, got {device_id}"
            )));
        }
        let mut gpu_options = GpuOptions::default();
        if let Some(d) = gpu {
            let pairs = d
                .iter()
                .map(|(k, v)| {
                    let v = match v.extract::<bool>() {
                        Ok(b) => b.to_string(),
                        Err(_) => v.str()?.to_string(),
                    };
                    Ok(format!("{}={v}", k.str()?))
                })
                .collect::<PyResult<Vec<String>>>()?;
            gpu_options.apply_pairs(&pairs).map_err(errors::runtime)?;
        }
        let options = PipelineOptions {
            provider: provider.parse().map_err(errors::runtime)?,
            backend: BackendOptions {
                threads,
                ort_lib,
                device_id,
                gpu: gpu_options,
                openvino_lib,
                ..BackendOptions::default()
            },
        };
        let dir = model_dir.clone();
        let pipe = py
            .detach(move || flowar_runtime::Pipeline::load(&dir, &options))
            .map_err(errors::runtime)?;
        let manifest_json = serde_json::to_string(pipe.manifest())
            .map_err(|e| PyValueError::new_err(format!("manifest: {e}")))?;
        Ok(Pipeline {
            provider: pipe.provider().provider.name().to_string(),
            provider_reason: pipe.provider().reason.clone(),
            manifest: pipe.manifest().clone(),
            inner: Mutex::new(pipe),
            manifest_json,
            model_dir,
            swept: Mutex::new(Default::default()),
        })
    }

    /// The model folder's manifest, as JSON text.
    #[getter]
    fn manifest_json(&self) -> &str {
        &self.manifest_json
    }

    #[getter]
    fn provider(&self) -> &str {
        &self.provider
    }

    #[getter]
    fn provider_reason(&self) -> &str {
        &self.provider_reason
    }

    #[getter]
    fn model_dir(&self) -> PathBuf {
        self.model_dir.clone()
    }

    /// Images at the global `indices` (RNG stream k for image k), as RGB8 bytes
    /// `[N, H, W, 3]`; returns (bytes, N, H, W).
    #[pyo3(signature = (classes, indices, seed, cfg, guidance, steps, solver, batch_size, progress))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        classes: Vec<ClassArg>,
        indices: Vec<u64>,
        seed: u64,
        cfg: Option<f64>,
        guidance: Option<f64>,
        steps: Option<StepsArg>,
        solver: &str,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Bound<'py, PyByteArray>, usize, usize, usize)> {
        let req = request(
            &self.manifest,
            classes,
            indices,
            seed,
            cfg,
            guidance,
            steps,
            solver,
        )
        .map_err(errors::runtime)?;
        let mut pixels: Vec<u8> = Vec::new();
        let (mut h, mut w) = (0, 0);
        self.run_batches(py, &req, batch_size, progress, &mut |_, images| {
            for img in images {
                (h, w) = (img.height, img.width);
                pixels.extend_from_slice(&img.pixels);
            }
            Ok(())
        })?;
        Ok((PyByteArray::new(py, &pixels), req.classes.len(), h, w))
    }

    /// Generates the images at `indices` into `out_dir` as `NNNNNN.png`, with the PNG
    /// text `flowar generate --out` writes; returns the paths written.
    #[pyo3(signature = (out_dir, classes, indices, seed, cfg, guidance, steps, solver, batch_size, progress))]
    #[allow(clippy::too_many_arguments)]
    fn generate_to(
        &self,
        py: Python<'_>,
        out_dir: PathBuf,
        classes: Vec<ClassArg>,
        indices: Vec<u64>,
        seed: u64,
        cfg: Option<f64>,
        guidance: Option<f64>,
        steps: Option<StepsArg>,
        solver: &str,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Vec<PathBuf>> {
        let req = request(
            &self.manifest,
            classes,
            indices,
            seed,
            cfg,
            guidance,
            steps,
            solver,
        )
        .map_err(errors::runtime)?;
        std::fs::create_dir_all(&out_dir).map_err(|e| errors::runtime(Error::io(&out_dir, e)))?;
        // Temporaries of this host's killed writers (see flowar_runtime::atomic_file), once
        // per folder.
        let swept = || self.swept.lock().unwrap_or_else(|p| p.into_inner());
        if !swept().contains(&out_dir) {
            sample_set::sweep_stale(&out_dir).map_err(errors::runtime)?;
            swept().insert(out_dir.clone());
        }
        let mut written = Vec::new();
        self.run_batches(py, &req, batch_size, progress, &mut |part, images| {
            written.extend(sample_set::save_images(
                &out_dir,
                &self.manifest,
                part,
                &images,
            )?);
            Ok(())
        })?;
        Ok(written)
    }
}
