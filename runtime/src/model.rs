//! A loaded model folder: the manifest and one session per graph, with typed calls for
//! each graph (AR step, flow head, VAE decode). The sampler is built on these.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::backend::{
    gpu, open_session_with, BackendOptions, Provider, Resident, Session, TrtSetup,
};
use crate::error::{Error, Result};
use crate::manifest::{GraphSpec, Manifest};
use crate::rope;
use crate::tensor::Tensor;

/// Per-layer key/value tensors `[rows, heads, past, hd]` carried from scale to scale, kept
/// where the AR step computes them.
pub struct KvCache {
    /// `(key, value)` per cache layer, in manifest order.
    pub layers: Vec<(Resident, Resident)>,
}

impl KvCache {
    /// An empty cache (`past = 0`) for `rows` rows.
    pub fn empty(m: &Manifest, rows: usize) -> KvCache {
        let a = &m.architecture.ar;
        let e = || Resident::Host(Tensor::f32(vec![rows, a.heads, 0, a.head_dim], vec![]));
        KvCache {
            layers: a.cache_layers.iter().map(|_| (e(), e())).collect(),
        }
    }
    pub fn tokens(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.0.shape().get(2).copied())
            .unwrap_or(0)
    }
    /// A copy on the same device (for benchmarks that replay one scale).
    pub fn try_clone(&self) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.try_clone()?, v.try_clone()?)))
            .collect::<Result<_>>()?;
        Ok(KvCache { layers })
    }
}

/// Per-scale tables that do not change between solver steps, uploaded once at load.
pub struct ScaleTables {
    pub side: usize,
    pub ar_cos: Resident,
    pub ar_sin: Resident,
    pub flow_cos: Resident,
    pub flow_sin: Resident,
    pub positions: Resident,
}

/// What one [`Model::solver_step`] returns, all left on the device but `nonfinite`.
pub struct SolverStep {
    /// The float64 state after the update, `[batch, tokens, C]`.
    pub x: Resident,
    /// The state as the flow head's float32 `x`: `[batch, ..]` and `[2 batch, ..]`.
    pub x_in: Resident,
    pub x_in_pair: Resident,
    /// How many velocity elements were NaN or infinite.
    pub nonfinite: usize,
}

pub struct Model {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub provider: Provider,
    ar: Box<dyn Session>,
    flow: Box<dyn Session>,
    vae: Box<dyn Session>,
    step: Box<dyn Session>,
    tables: Vec<ScaleTables>,
    pub load_time: Duration,
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Model {
            path: path.to_path_buf(),
            reason: "graph file named in the manifest is missing".into(),
        },
        _ => Error::io(path, e),
    })?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Opens one graph after checking it is the file the manifest describes.
fn open_graph(
    dir: &Path,
    spec: &GraphSpec,
    provider: Provider,
    opts: &BackendOptions,
    trt: Option<&TrtSetup>,
) -> Result<Box<dyn Session>> {
    let path = dir.join(&spec.file);
    let hash = sha256_file(&path)?;
    if hash != spec.sha256 {
        return Err(Error::Model {
            path,
            reason: format!(
                "sha256 {hash} does not match the manifest's {} (file modified, truncated or swapped with another graph); re-run `flowar convert`",
                &spec.sha256
            ),
        });
    }
    open_session_with(provider, &path, opts, trt)
}

/// The TensorRT engine-cache folder for this model, created, with a notice on stderr when
/// no engine is there yet (building them takes minutes).
fn trt_cache(manifest: &Manifest, opts: &BackendOptions) -> Result<std::path::PathBuf> {
    let version = crate::backend::ort_backend::tensorrt_version(opts).map_err(|reason| {
        Error::ProviderUnavailable {
            provider: Provider::TensorRt.name().into(),
            reason,
        }
    })?;
    let root = opts
        .gpu
        .trt_cache_dir
        .clone()
        .unwrap_or_else(gpu::cache_root);
    let dir = gpu::trt_cache_dir(&root, manifest, &version, &opts.gpu);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    if !gpu::has_engines(&dir) {
        eprintln!(
            "flowar: building TensorRT {version} engines for this model (first run for this \
             model, TensorRT version, precision and max batch {}); this takes minutes and is \
             cached in {}",
            opts.gpu.trt_max_batch,
            dir.display()
        );
    }
    Ok(dir)
}

impl Model {
    pub fn load(dir: &Path, provider: Provider, opts: &BackendOptions) -> Result<Model> {
        let start = Instant::now();
        let manifest = Manifest::load(dir)?;
        let g = &manifest.graphs;
        let cache = match provider {
            Provider::TensorRt => Some(trt_cache(&manifest, opts)?),
            _ => None,
        };
        let setup = |spec: &GraphSpec| -> Result<Option<TrtSetup>> {
            cache
                .as_ref()
                .map(|dir| {
                    Ok(TrtSetup {
                        cache_dir: dir.clone(),
                        profile: gpu::trt_profile(&manifest, spec, opts.gpu.trt_max_batch)?,
                    })
                })
                .transpose()
        };
        let open = |spec: &GraphSpec| open_graph(dir, spec, provider, opts, setup(spec)?.as_ref());
        let (ar, flow, vae) = (
            open(&g.ar_step)?,
            open(&g.flow_head)?,
            open(&g.vae_decoder)?,
        );
        // TensorRT has no float64: the solver step (a handful of elementwise nodes) runs on
        // the CUDA provider, on the same device.
        let step_provider = match provider {
            Provider::TensorRt => Provider::Cuda,
            p => p,
        };
        let step = open_graph(dir, &g.solver_step, step_provider, opts, None)?;
        let mut start_tok = 0usize;
        let mut tables = Vec::with_capacity(manifest.scales.len());
        for &side in &manifest.scales {
            let n = side * side;
            let r = &manifest.rope;
            let (ac, asn) = rope::tables(side, r.ar_head_dim, r.theta, r.grid_constant);
            let (fc, fs) = rope::tables(side, r.flow_head_dim, r.theta, r.grid_constant);
            let positions = Tensor::i64(
                vec![n],
                (start_tok as i64..(start_tok + n) as i64).collect(),
            );
            start_tok += n;
            tables.push(ScaleTables {
                side,
                ar_cos: ar.upload(&Tensor::f32(vec![n, r.ar_head_dim], ac))?,
                ar_sin: ar.upload(&Tensor::f32(vec![n, r.ar_head_dim], asn))?,
                flow_cos: flow.upload(&Tensor::f32(vec![n, r.flow_head_dim], fc))?,
                flow_sin: flow.upload(&Tensor::f32(vec![n, r.flow_head_dim], fs))?,
                positions: ar.upload(&positions)?,
            });
        }
        Ok(Model {
            dir: dir.to_path_buf(),
            manifest,
            provider,
            ar,
            flow,
            vae,
            step,
            tables,
            load_time: start.elapsed(),
        })
    }

    pub fn tables(&self, scale: usize) -> &ScaleTables {
        &self.tables[scale]
    }

    /// Copies a host tensor to where the graphs compute (the GPU on CUDA and TensorRT).
    pub fn upload(&self, t: &Tensor) -> Result<Resident> {
        self.flow.upload(t)
    }

    /// One AR step at `scale`: `labels [rows]`, `tokens [rows, N, C]` (ignored at scale 0).
    /// Returns `z [rows, N, D]` and extends `cache` by this scale's keys and values.
    pub fn ar_step(
        &mut self,
        scale: usize,
        labels: &[i64],
        tokens: &Resident,
        cache: &mut KvCache,
    ) -> Result<Resident> {
        let m = &self.manifest;
        let t = &self.tables[scale];
        let labels = Resident::Host(Tensor::i64(vec![labels.len()], labels.to_vec()));
        let first = Resident::Host(Tensor::bool_scalar(scale == 0));
        let names: Vec<(String, String)> = m
            .architecture
            .ar
            .cache_layers
            .iter()
            .map(|l| (format!("past_key.{l}"), format!("past_value.{l}")))
            .collect();
        let mut inputs: Vec<(&str, &Resident)> = vec![
            ("labels", &labels),
            ("tokens", tokens),
            ("first_scale", &first),
            ("positions", &t.positions),
            ("rope_cos", &t.ar_cos),
            ("rope_sin", &t.ar_sin),
        ];
        for ((k, v), (kn, vn)) in cache.layers.iter().zip(names.iter()) {
            inputs.push((kn, k));
            inputs.push((vn, v));
        }
        let mut out = self.ar.run_resident(&inputs)?.into_iter();
        let z = out
            .next()
            .ok_or_else(|| self.missing_output("ar_step", "z"))?;
        let shape = z.shape();
        if shape.get(2) != Some(&m.architecture.ar.width) {
            return Err(Error::Model {
                path: self.dir.join(&m.graphs.ar_step.file),
                reason: format!(
                    "`z` came out with shape {shape:?} but the manifest gives the AR width as {} (manifest and graphs disagree; re-run `flowar convert`)",
                    m.architecture.ar.width
                ),
            });
        }
        for layer in cache.layers.iter_mut() {
            let k = out
                .next()
                .ok_or_else(|| self.missing_output("ar_step", "present_key"))?;
            let v = out
                .next()
                .ok_or_else(|| self.missing_output("ar_step", "present_value"))?;
            *layer = (k, v);
        }
        Ok(z)
    }

    /// One flow-head call: `x [rows, N, C]`, `t [rows]`, `z [rows, N, D]` -> `v [rows, N, C]`.
    pub fn flow(
        &mut self,
        scale: usize,
        x: &Resident,
        t: &Resident,
        z: &Resident,
    ) -> Result<Resident> {
        let tb = &self.tables[scale];
        let inputs = [
            ("x", x),
            ("t", t),
            ("z", z),
            ("rope_cos", &tb.flow_cos),
            ("rope_sin", &tb.flow_sin),
        ];
        self.flow
            .run_resident(&inputs)?
            .into_iter()
            .next()
            .ok_or_else(|| self.missing_output("flow_head", "v"))
    }

    /// One solver update: guidance on `v` with weight `w`, then `x + dt * g` (see the
    /// exporter's `solver_step` graph). Only the non-finite count comes back to the host.
    pub fn solver_step(
        &mut self,
        x: &Resident,
        v: &Resident,
        w: f32,
        dt: f64,
    ) -> Result<SolverStep> {
        let w = Resident::Host(Tensor::f32_scalar(w));
        let dt = Resident::Host(Tensor::f64_scalar(dt));
        let inputs = [("x", x), ("v", v), ("w", &w), ("dt", &dt)];
        let mut out = self.step.run_resident(&inputs)?.into_iter();
        let mut next = |name: &str| {
            out.next()
                .ok_or_else(|| self.missing_output("solver_step", name))
        };
        let x = next("x_next")?;
        let x_in = next("x_in")?;
        let x_in_pair = next("x_in_pair")?;
        let count = next("nonfinite")?.to_host()?;
        let nonfinite = count
            .as_f32()
            .and_then(|c| c.first())
            .map(|&c| c as usize)
            .ok_or_else(|| self.missing_output("solver_step", "nonfinite (float32 scalar)"))?;
        Ok(SolverStep {
            x,
            x_in,
            x_in_pair,
            nonfinite,
        })
    }

    /// VAE decode of `latent [batch, C, G, G]` (not yet divided by the latent scale).
    pub fn decode(&mut self, latent: &Tensor) -> Result<Tensor> {
        self.vae
            .run(&[("latent", latent)])?
            .into_iter()
            .next()
            .ok_or_else(|| self.missing_output("vae_decoder", "image"))
    }

    fn missing_output(&self, graph: &str, name: &str) -> Error {
        Error::Model {
            path: self.dir.clone(),
            reason: format!("graph {graph} returned no `{name}` output"),
        }
    }
}
