//! `flowar._flowar.Pipeline`: a model folder loaded on a provider. Generation and editing
//! run with the GIL released; every solver step they take the GIL back briefly to call the
//! progress callback and to notice Ctrl-C, and either stops the run.
//!
//! Lock order: the Pipeline's mutex is only ever taken with the GIL released (inside
//! `py.detach`). A thread holding the mutex takes the GIL for its progress callback, so
//! one waiting for the mutex while holding the GIL would deadlock the two.

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict};

use flowar_runtime::backend::gpu::GpuOptions;
use flowar_runtime::backend::BackendOptions;
use flowar_runtime::image::{save_png, RgbImage};
use flowar_runtime::sampler::schedule::Steps;
use flowar_runtime::{edit_input, sample_set, EditPlan, Error, Mask, PipelineOptions, Request};

use crate::edit::{self, Input};
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

/// Class ids of classes given by id or name (ids are range-checked with the request).
fn class_ids(
    m: &flowar_runtime::manifest::Manifest,
    classes: Vec<ClassArg>,
) -> Result<Vec<usize>, Error> {
    classes
        .into_iter()
        .map(|c| match c {
            ClassArg::Id(i) => usize::try_from(i).map_err(|_| {
                Error::BadArgument(format!("class id {i} is out of range: ids are 0 or more"))
            }),
            ClassArg::Name(name) => Ok(m.class_id(&name)?),
        })
        .collect()
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
    let classes = class_ids(m, classes)?;
    request_ids(m, classes, indices, seed, cfg, guidance, steps, solver)
}

/// [`request`] of class ids.
#[allow(clippy::too_many_arguments)]
fn request_ids(
    m: &flowar_runtime::manifest::Manifest,
    classes: Vec<usize>,
    indices: Vec<u64>,
    seed: u64,
    cfg: Option<f64>,
    guidance: Option<f64>,
    steps: Option<StepsArg>,
    solver: &str,
) -> Result<Request, Error> {
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

/// Takes each batch's first row in the whole request, its request and its images as they
/// are generated.
type BatchSink<'a> = dyn FnMut(usize, &Request, Vec<RgbImage>) -> Result<(), Error> + Send + 'a;

/// What an edit adds to a run: row `r` of the request edits `inputs[rows[r]]`, scales
/// `0..keep_scales` known whole.
struct EditSources<'a> {
    inputs: &'a [Input],
    rows: &'a [usize],
    keep_scales: usize,
}

/// Takes each edit as it is made: its global index, class, source and image (composited
/// already when asked), and its batch's request.
type EditSink<'a> =
    dyn FnMut(u64, usize, &Input, RgbImage, &Request) -> Result<(), Error> + Send + 'a;

/// An edit's settings besides its sources, as `flowar edit` takes them.
struct EditSettings {
    /// One per source image; `None`: unconditional (the null class, guidance off).
    classes: Option<Vec<ClassArg>>,
    keep_scales: usize,
    /// The masks are inverted already; this only checks that there is one.
    invert_mask: bool,
    composite: bool,
    seed: u64,
    cfg: Option<f64>,
    guidance: Option<f64>,
    steps: Option<StepsArg>,
    solver: String,
    batch_size: usize,
}

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
    /// batch's request and images. An edit's sources are encoded first, in batches of
    /// `batch_size` as `flowar edit` encodes them, each once. Returns the first Python
    /// error (a callback's, or `KeyboardInterrupt`) ahead of the runtime's `Cancelled`.
    fn run_batches(
        &self,
        py: Python<'_>,
        req: &Request,
        batch_size: usize,
        edit: Option<&EditSources<'_>>,
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
            let sources = match edit {
                Some(e) => {
                    let images: Vec<RgbImage> =
                        e.inputs.iter().map(|i| i.source.image.clone()).collect();
                    let mut tokens = Vec::new();
                    for chunk in images.chunks(batch_size) {
                        tokens.extend(pipe.encode(chunk)?);
                    }
                    let masks: Vec<Option<Mask>> =
                        e.inputs.iter().map(|i| i.mask.clone()).collect();
                    Some((e, tokens, masks))
                }
                None => None,
            };
            for (batch, (ix, cl)) in req
                .image_indices
                .chunks(batch_size)
                .zip(req.classes.chunks(batch_size))
                .enumerate()
            {
                let start = batch * batch_size;
                let mut part = Request {
                    classes: cl.to_vec(),
                    image_indices: ix.to_vec(),
                    ..req.clone()
                };
                if let Some((e, tokens, masks)) = &sources {
                    let rows = &e.rows[start..start + ix.len()];
                    let plan =
                        EditPlan::for_rows(tokens, masks, e.keep_scales, rows, pipe.manifest())?;
                    part = part.with_edit(Some(plan));
                }
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
                sink(start, &part, out.images)?;
            }
            Ok(())
        });
        match (result, raised) {
            (Err(Error::Cancelled), Some(e)) => Err(e),
            (r, _) => r.map_err(errors::runtime),
        }
    }

    /// Creates `out_dir` and removes the temporaries of this host's killed writers there
    /// (see flowar_runtime::atomic_file), once per folder.
    fn out_dir_ready(&self, out_dir: &std::path::Path) -> PyResult<()> {
        std::fs::create_dir_all(out_dir).map_err(|e| errors::runtime(Error::io(out_dir, e)))?;
        let swept = || self.swept.lock().unwrap_or_else(|p| p.into_inner());
        if !swept().contains(out_dir) {
            sample_set::sweep_stale(out_dir).map_err(errors::runtime)?;
            swept().insert(out_dir.to_path_buf());
        }
        Ok(())
    }

    /// Fails as `flowar edit` does on a model folder without a VAE encoder (saying how to
    /// convert one that has it), before any input is read.
    fn require_encoder(&self, py: Python<'_>) -> PyResult<()> {
        if self.manifest.graphs.vae_encoder.is_some() {
            return Ok(());
        }
        py.detach(|| self.lock()?.model_mut().require_encoder())
            .map_err(errors::runtime)
    }

    /// Edits by `flowar edit`'s rule: row `r`, global image `indices[r]` (its noise stream,
    /// so an edit does not depend on the batch it runs in), edits `inputs[rows[r]]`.
    /// `sink` takes each edit as it is made.
    #[allow(clippy::too_many_arguments)]
    fn run_edit(
        &self,
        py: Python<'_>,
        inputs: &[Input],
        rows: &[usize],
        indices: Vec<u64>,
        s: EditSettings,
        progress: Option<Py<PyAny>>,
        sink: &mut EditSink<'_>,
    ) -> PyResult<()> {
        let m = &self.manifest;
        let bad = |msg: String| Err(PyValueError::new_err(msg));
        if s.keep_scales > m.scales.len() {
            return bad(format!(
                "keep_scales {} exceeds the model's {} scales {:?}",
                s.keep_scales,
                m.scales.len(),
                m.scales
            ));
        }
        if rows.len() != indices.len() {
            return bad(format!(
                "{} source rows for {} image indices",
                rows.len(),
                indices.len()
            ));
        }
        if let Some(r) = rows.iter().find(|&&r| r >= inputs.len()) {
            return bad(format!(
                "row source {r} is past the {} source images",
                inputs.len()
            ));
        }
        edit::check(inputs, s.invert_mask, s.composite).map_err(errors::runtime)?;
        let (ids, cfg) = match s.classes {
            None => {
                if s.cfg.is_some_and(|c| c != 1.0) {
                    return bad(
                        "an unconditional edit has no class: guidance has no class to steer \
                         to, so cfg must be 1 or None"
                            .into(),
                    );
                }
                (vec![m.null_class; inputs.len()], Some(1.0))
            }
            Some(c) => {
                let ids = class_ids(m, c).map_err(errors::runtime)?;
                if ids.len() != inputs.len() {
                    return bad(format!(
                        "{} labels for {} images: give one per image, or one for all",
                        ids.len(),
                        inputs.len()
                    ));
                }
                (ids, s.cfg)
            }
        };
        let req = request_ids(
            m,
            rows.iter().map(|&r| ids[r]).collect(),
            indices,
            s.seed,
            cfg,
            s.guidance,
            s.steps,
            &s.solver,
        )
        .map_err(errors::runtime)?;
        let sources = EditSources {
            inputs,
            rows,
            keep_scales: s.keep_scales,
        };
        let composite = s.composite;
        self.run_batches(
            py,
            &req,
            s.batch_size,
            Some(&sources),
            progress,
            &mut |start, part, images| {
                for (p, mut img) in images.into_iter().enumerate() {
                    let input = &inputs[rows[start + p]];
                    if let Some(mask) = input.mask.as_ref().filter(|_| composite) {
                        edit_input::composite(&mut img, &input.source.image, mask)?;
                    }
                    sink(part.image_indices[p], part.classes[p], input, img, part)?;
                }
                Ok(())
            },
        )
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
        self.run_batches(py, &req, batch_size, None, progress, &mut |_, _, images| {
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
        self.out_dir_ready(&out_dir)?;
        let mut written = Vec::new();
        self.run_batches(
            py,
            &req,
            batch_size,
            None,
            progress,
            &mut |_, part, images| {
                written.extend(sample_set::save_images(
                    &out_dir,
                    &self.manifest,
                    part,
                    &images,
                )?);
                Ok(())
            },
        )?;
        Ok(written)
    }

    /// Edits of source images given as 8-bit buffers: `images[i]` is `(pixels, height,
    /// width, channels)` (3: RGB, 4: RGBA, whose alpha is the mask where `masks[i]` is
    /// None), `masks[i]` `(values, height, width)` (above 0 = regenerate) of the image's
    /// size or the model's, `classes` one per image (None: unconditional). Edit `j` of
    /// image `i` is row `i * count + j` and global image `i * count + j` (its noise
    /// stream), as `flowar edit` numbers them. Returns (RGB8 bytes, N, H, W).
    #[pyo3(signature = (images, masks, classes, keep_scales, invert_mask, composite, count, seed, cfg, guidance, steps, solver, batch_size, progress))]
    #[allow(clippy::too_many_arguments)]
    fn edit<'py>(
        &self,
        py: Python<'py>,
        images: Vec<(Bound<'py, PyBytes>, usize, usize, usize)>,
        masks: Vec<Option<(Bound<'py, PyBytes>, usize, usize)>>,
        classes: Option<Vec<ClassArg>>,
        keep_scales: usize,
        invert_mask: bool,
        composite: bool,
        count: usize,
        seed: u64,
        cfg: Option<f64>,
        guidance: Option<f64>,
        steps: Option<StepsArg>,
        solver: String,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Bound<'py, PyByteArray>, usize, usize, usize)> {
        if count == 0 {
            return Err(PyValueError::new_err("count must be at least 1"));
        }
        if images.is_empty() {
            return Err(PyValueError::new_err("no images to edit"));
        }
        if masks.len() != images.len() {
            return Err(PyValueError::new_err(format!(
                "{} masks for {} images",
                masks.len(),
                images.len()
            )));
        }
        self.require_encoder(py)?;
        let size = self.manifest.image_size;
        let pixels: Vec<(&[u8], usize, usize, usize)> = images
            .iter()
            .map(|(b, h, w, c)| (b.as_bytes(), *h, *w, *c))
            .collect();
        let grey: Vec<Option<(&[u8], usize, usize)>> = masks
            .iter()
            .map(|m| m.as_ref().map(|(b, h, w)| (b.as_bytes(), *h, *w)))
            .collect();
        // Fitting a large image takes a while: without the GIL.
        let inputs = py
            .detach(|| {
                pixels
                    .iter()
                    .zip(&grey)
                    .enumerate()
                    .map(|(i, (&im, &mk))| edit::from_pixels(i, im, mk, invert_mask, size))
                    .collect::<Result<Vec<Input>, Error>>()
            })
            .map_err(errors::runtime)?;
        let total = inputs.len() * count;
        let rows: Vec<usize> = (0..total).map(|k| k / count).collect();
        let settings = EditSettings {
            classes,
            keep_scales,
            invert_mask,
            composite,
            seed,
            cfg,
            guidance,
            steps,
            solver,
            batch_size,
        };
        let mut out: Vec<u8> = Vec::new();
        let (mut h, mut w) = (0, 0);
        self.run_edit(
            py,
            &inputs,
            &rows,
            (0..total as u64).collect(),
            settings,
            progress,
            &mut |_, _, _, img, _| {
                (h, w) = (img.height, img.width);
                out.extend_from_slice(&img.pixels);
                Ok(())
            },
        )?;
        Ok((PyByteArray::new(py, &out), total, h, w))
    }

    /// Edits of PNG files into `out_dir` as `NNNNNN.png` with the PNG text `flowar edit
    /// --out` writes: row `r` is global image `indices[r]` and edits `images[rows[r]]`
    /// (under `masks[rows[r]]`, a PNG file, or its alpha when None), `classes` one per
    /// image (None: unconditional). `task` is the set's `flowar:edit` (default: what these
    /// images make it). Returns the paths written; each is written whole or not at all.
    #[pyo3(signature = (out_dir, images, masks, rows, indices, classes, keep_scales, invert_mask, composite, task, seed, cfg, guidance, steps, solver, batch_size, progress))]
    #[allow(clippy::too_many_arguments)]
    fn edit_to(
        &self,
        py: Python<'_>,
        out_dir: PathBuf,
        images: Vec<PathBuf>,
        masks: Vec<Option<PathBuf>>,
        rows: Vec<usize>,
        indices: Vec<u64>,
        classes: Option<Vec<ClassArg>>,
        keep_scales: usize,
        invert_mask: bool,
        composite: bool,
        task: Option<String>,
        seed: u64,
        cfg: Option<f64>,
        guidance: Option<f64>,
        steps: Option<StepsArg>,
        solver: String,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Vec<PathBuf>> {
        if masks.len() != images.len() {
            return Err(PyValueError::new_err(format!(
                "{} masks for {} images",
                masks.len(),
                images.len()
            )));
        }
        self.require_encoder(py)?;
        let size = self.manifest.image_size;
        let inputs = py
            .detach(|| {
                images
                    .iter()
                    .zip(&masks)
                    .map(|(p, m)| edit::from_files(p, m.as_deref(), invert_mask, size))
                    .collect::<Result<Vec<Input>, Error>>()
            })
            .map_err(errors::runtime)?;
        let task = task.unwrap_or_else(|| {
            let any_mask = inputs.iter().any(|i| i.mask.is_some());
            edit::task(any_mask, keep_scales, invert_mask).to_string()
        });
        self.out_dir_ready(&out_dir)?;
        let settings = EditSettings {
            classes,
            keep_scales,
            invert_mask,
            composite,
            seed,
            cfg,
            guidance,
            steps,
            solver,
            batch_size,
        };
        let m = &self.manifest;
        let mut written = Vec::new();
        self.run_edit(
            py,
            &inputs,
            &rows,
            indices,
            settings,
            progress,
            &mut |k, class, input, img, req| {
                let mut text = sample_set::png_text(m, req, k, class);
                text.extend(edit::text(
                    input,
                    &task,
                    invert_mask,
                    keep_scales,
                    composite,
                ));
                let path = out_dir.join(sample_set::file_name(k));
                save_png(&path, &img, &text)?;
                written.push(path);
                Ok(())
            },
        )?;
        Ok(written)
    }
}
