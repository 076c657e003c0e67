//! A loaded model folder: the manifest and one session per graph, with typed calls for
//! each graph (AR step, flow head, VAE decode, solver step). The sampler is built on these.
//! This is where graph roles, their input names and the model's TensorRT profiles
//! ([`tensorrt`]) meet the backends, which know none of them.

pub mod tensorrt;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::backend::{
    open_session_with, tensorrt::prepare_engine_cache, BackendOptions, InferencePrecision,
    Provider, Resident, Session, TrtSetup,
};
use crate::error::{Error, Result};
use crate::manifest::{GraphSpec, Manifest};
use crate::rope;
use crate::tensor::Tensor;
use flowar_format::{io, GraphRole};

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
    /// The VAE encoder (editing only), opened on first use so generation pays nothing for it.
    encoder: Option<Box<dyn Session>>,
    /// What the encoder is opened with.
    options: BackendOptions,
    tables: Vec<ScaleTables>,
    /// The largest batch the sessions were built for (TensorRT's profiles); `None`: any.
    batch_limit: Option<usize>,
    /// TensorRT's engine-cache folder, held so the cache's size cap never evicts the
    /// engines of a loaded model (onnxruntime may build and read them on any run).
    _engine_cache: Option<crate::cache::Lease>,
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
    let inference_precision = match spec.inference_precision.as_deref() {
        None => opts.inference_precision,
        Some("f32") => InferencePrecision::F32,
        Some("bf16") => InferencePrecision::Bf16,
        Some(other) => {
            return Err(Error::Model {
                path,
                reason: format!(
                    "the manifest asks for inference precision `{other}`; this runtime knows f32 and bf16 (a newer exporter wrote it?)"
                ),
            })
        }
    };
    let opts = BackendOptions {
        inference_precision,
        ..opts.clone()
    };
    open_session_with(provider, &path, &opts, trt)
}

impl Model {
    pub fn load(dir: &Path, provider: Provider, opts: &BackendOptions) -> Result<Model> {
        Self::load_from(dir, Manifest::load(dir)?, provider, opts)
    }

    /// [`Model::load`] with `dir`'s manifest already read (the pipeline reads it first to
    /// choose the provider).
    pub fn load_from(
        dir: &Path,
        manifest: Manifest,
        provider: Provider,
        opts: &BackendOptions,
    ) -> Result<Model> {
        let start = Instant::now();
        let g = &manifest.graphs;
        let cache = provider
            .builds_engines()
            .then(|| prepare_engine_cache(&tensorrt::graphs_key(&manifest), opts))
            .transpose()?;
        let setup = |spec: &GraphSpec| -> Result<Option<TrtSetup>> {
            cache
                .as_ref()
                .map(|lease| {
                    Ok(TrtSetup {
                        cache_dir: lease.dir().to_path_buf(),
                        shapes: tensorrt::shape_ranges(&manifest, spec, opts.gpu.trt_max_batch)?,
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
        // The solver step updates the float64 state (a handful of elementwise nodes); on
        // TensorRT, which has no float64, it runs on CUDA on the same device.
        let step = open_graph(dir, &g.solver_step, provider.for_float64(), opts, None)?;
        if cache.is_some() {
            crate::backend::tensorrt::evict_after_build(opts)?;
        }
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
        let batch_limit = provider.builds_engines().then_some(opts.gpu.trt_max_batch);
        Ok(Model {
            dir: dir.to_path_buf(),
            manifest,
            provider,
            batch_limit,
            ar,
            flow,
            vae,
            step,
            encoder: None,
            options: opts.clone(),
            tables,
            _engine_cache: cache,
            load_time: start.elapsed(),
        })
    }

    /// The largest batch (images per call) this model's sessions can run, when they were
    /// built for one (TensorRT's profiles); `None` when any batch runs.
    pub fn batch_limit(&self) -> Option<usize> {
        self.batch_limit
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
            .map(|l| (io::ar_step::past_key(l), io::ar_step::past_value(l)))
            .collect();
        let mut inputs: Vec<(&str, &Resident)> = vec![
            (io::ar_step::LABELS, &labels),
            (io::ar_step::TOKENS, tokens),
            (io::ar_step::FIRST_SCALE, &first),
            (io::ar_step::POSITIONS, &t.positions),
            (io::ar_step::ROPE_COS, &t.ar_cos),
            (io::ar_step::ROPE_SIN, &t.ar_sin),
        ];
        for ((k, v), (kn, vn)) in cache.layers.iter().zip(names.iter()) {
            inputs.push((kn, k));
            inputs.push((vn, v));
        }
        let mut out = self.ar.run_resident(&inputs)?.into_iter();
        let z = out
            .next()
            .ok_or_else(|| self.missing_output(GraphRole::ArStep.name(), io::ar_step::Z))?;
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
                .ok_or_else(|| self.missing_output(GraphRole::ArStep.name(), "present_key"))?;
            let v = out
                .next()
                .ok_or_else(|| self.missing_output(GraphRole::ArStep.name(), "present_value"))?;
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
            (io::flow_head::X, x),
            (io::flow_head::T, t),
            (io::flow_head::Z, z),
            (io::flow_head::ROPE_COS, &tb.flow_cos),
            (io::flow_head::ROPE_SIN, &tb.flow_sin),
        ];
        self.flow
            .run_resident(&inputs)?
            .into_iter()
            .next()
            .ok_or_else(|| self.missing_output(GraphRole::FlowHead.name(), io::flow_head::V))
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
        use io::solver_step as s;
        let inputs = [(s::X, x), (s::V, v), (s::W, &w), (s::DT, &dt)];
        let mut out = self.step.run_resident(&inputs)?.into_iter();
        let mut next = |name: &str| {
            out.next()
                .ok_or_else(|| self.missing_output(GraphRole::SolverStep.name(), name))
        };
        let x = next(s::X_NEXT)?;
        let x_in = next(s::X_IN)?;
        let x_in_pair = next(s::X_IN_PAIR)?;
        let count = next(s::NONFINITE)?.to_host()?;
        let nonfinite = count
            .as_f32()
            .and_then(|c| c.first())
            .map(|&c| c as usize)
            .ok_or_else(|| {
                self.missing_output(GraphRole::SolverStep.name(), "nonfinite (float32 scalar)")
            })?;
        Ok(SolverStep {
            x,
            x_in,
            x_in_pair,
            nonfinite,
        })
    }

    /// VAE decode of `latent [batch, C, G, G]` (not yet divided by the latent scale).
    /// Stops on a non-finite probe (see `flowar_format::io::NONFINITE_PROBE`).
    pub fn decode(&mut self, latent: &Tensor) -> Result<Tensor> {
        let mut out = self
            .vae
            .run(&[(io::vae_decoder::LATENT, latent)])?
            .into_iter();
        let image = out.next().ok_or_else(|| {
            self.missing_output(GraphRole::VaeDecoder.name(), io::vae_decoder::IMAGE)
        })?;
        self.check_probe(GraphRole::VaeDecoder, out.next())?;
        Ok(image)
    }

    /// A VAE graph's `nonfinite_probe` (absent in folders converted before it existed):
    /// non-finite means a NaN or infinity inside the graph, even where the engine turned
    /// it into finite values by the output.
    fn check_probe(&self, role: GraphRole, probe: Option<Tensor>) -> Result<()> {
        let Some(p) = probe else { return Ok(()) };
        let value = p.as_f32().and_then(|v| v.first().copied());
        if value.is_some_and(f32::is_finite) {
            return Ok(());
        }
        let spec = self.manifest.graphs.get(role).expect("a graph that ran");
        let cure = match role {
            GraphRole::VaeEncoder => {
                "the encoder computes in float32 in every folder, so its \
                                      weights are damaged: convert again from a good checkpoint"
            }
            _ => {
                "large VAEs overflow in float16 (why diffusers configs carry `force_upcast`): \
                  convert with `--dtype f32`, or check the VAE weights"
            }
        };
        Err(Error::Model {
            path: self.dir.join(&spec.file),
            reason: format!(
                "produced NaN or infinite values inside the graph (a {} folder; probe {value:?}); \
                 nothing was written. {cure}",
                self.manifest.dtype
            ),
        })
    }

    /// Whether the folder can edit images (it has `vae_encoder.onnx`).
    pub fn can_encode(&self) -> bool {
        self.manifest.graphs.vae_encoder.is_some()
    }

    /// `Ok` when the folder can edit images; otherwise the error that says how to convert
    /// a folder that can.
    pub fn require_encoder(&self) -> Result<()> {
        if self.can_encode() {
            return Ok(());
        }
        Err(Error::Model {
            path: self.dir.clone(),
            reason: "this model folder has no VAE encoder (vae_encoder.onnx), so it cannot \
                     edit images; convert again with a VAE checkpoint that holds its encoder \
                     (`encoder.*` keys: MAR's kl16.ckpt, a diffusers AutoencoderKL folder, \
                     an SD/FLUX VAE), e.g. `flowar convert --flowar F.pth --vae kl16.ckpt \
                     --out DIR`"
                .into(),
        })
    }

    /// VAE encode of `image [batch, 3, H, W]` in [-1, 1] to tokens `[batch, C, G, G]` (the
    /// encode rule runs inside the graph). The encoder runs on the model's provider (CUDA
    /// under TensorRT).
    pub fn encode(&mut self, image: &Tensor) -> Result<Tensor> {
        if self.encoder.is_none() {
            self.require_encoder()?;
            let spec = self
                .manifest
                .graphs
                .vae_encoder
                .clone()
                .expect("required above");
            let provider = self.provider.encoder_provider();
            self.encoder = Some(open_graph(&self.dir, &spec, provider, &self.options, None)?);
        }
        let enc = self.encoder.as_mut().expect("just opened");
        let mut out = enc.run(&[(io::vae_encoder::IMAGE, image)])?.into_iter();
        let tokens = out.next().ok_or_else(|| {
            self.missing_output(GraphRole::VaeEncoder.name(), io::vae_encoder::TOKENS)
        })?;
        self.check_probe(GraphRole::VaeEncoder, out.next())?;
        Ok(tokens)
    }

    fn missing_output(&self, graph: &str, name: &str) -> Error {
        Error::Model {
            path: self.dir.clone(),
            reason: format!("graph {graph} returned no `{name}` output"),
        }
    }
}
