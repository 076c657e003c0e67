//! The benchmark engine behind `flowar bench`: load time, per-stage latency, throughput,
//! peak memory and achieved GFLOP/s against a same-run matmul calibration, per provider
//! and batch size.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowar_exporter::convert::{convert_as, ConvertRequest, Precision};
use flowar_exporter::preset::{flowar_keys, vae_full_keys, Preset, RandomWeights};
use flowar_exporter::quantize::Quantize;
use flowar_runtime::backend::{BackendOptions, Provider};
use flowar_runtime::image::RgbImage;
use flowar_runtime::manifest::{FlowKind, Manifest};
use flowar_runtime::{
    EditPlan, Mask, Pipeline, PipelineOptions, ProviderChoice, Request, Solver, StageTimes,
};

use crate::calibrate::{calibrate, model_shapes};
use crate::flops::{generation_flops, vae_encoder_flops, FlopCount};
use crate::report::{
    civil_date, BatchReport, EditCase, EditSettings, Flops, Machine, ModelInfo, ProviderReport,
    Report, Settings, Stat, VsGenerate,
};

/// `flowar bench` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A converted model folder (`flowar bench` without --model or --preset: the bundled
    /// demo, converted on first use).
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A released architecture with seeded random weights (s, l or h), converted once into
    /// `--cache-dir`.
    #[arg(long)]
    pub preset: Option<String>,
    /// Where `--preset` models are converted and kept (default: the system temp folder).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Providers to measure, comma-separated: ort-cpu, tract, openvino, cuda, tensorrt.
    #[arg(long, value_delimiter = ',', default_value = "ort-cpu,tract")]
    pub providers: Vec<String>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Solver steps: one count, or one per scale coarse to fine (25,25,20,12,8). Default:
    /// the manifest's.
    #[arg(long)]
    pub steps: Option<flowar_runtime::sampler::schedule::Steps>,
    /// Guidance scale (default: the manifest's; 1 turns CFG off).
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Guidance window (default: the manifest's).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// euler or heun.
    #[arg(long, default_value = "euler")]
    pub solver: String,
    /// Untimed runs per provider and batch before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs per provider and batch (min / median / max are over these).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads, onnxruntime library, GPU device and options, for every provider.
    #[command(flatten)]
    pub engine: flowar_runtime::cli_args::EngineArgs,
    /// Graph precision of a `--preset` conversion: f32, f16 or bf16 (see `flowar convert
    /// --dtype`; bf16 runs on openvino only).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// int8 block linears in a `--preset` conversion (the opt-in fast mode; see
    /// `flowar convert --quantize`). Not with --dtype f16 or bf16.
    #[arg(long, value_parser = ["int8"], requires = "preset")]
    pub quantize: Option<String>,
    /// Seconds of matmul calibration per shape.
    #[arg(long, default_value_t = 1.0)]
    pub calibration_s: f64,
    /// Write the full results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the tables as Markdown.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Draw stacked per-stage bars as a PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Re-render the tables and chart from a saved `--json` report instead of measuring.
    #[arg(long, conflicts_with_all = ["model", "preset"])]
    pub from_json: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
    /// generate, or edit: each batch is generated, then its own images are edited (VAE
    /// encoder, then the teacher-forced sampler), every edit case measured against the
    /// generation in the same runs. Needs a model folder with a VAE encoder.
    #[arg(long, default_value = "generate", value_parser = ["generate", "edit"])]
    pub mode: String,
    /// --mode edit: keep the first K scales of the source whole, one edit case per value,
    /// comma-separated (default: 2). Scales with nothing to regenerate skip the flow head.
    #[arg(long, value_delimiter = ',')]
    pub keep_scales: Vec<usize>,
    /// --mode edit: what to regenerate from scale K on: none (everything: a variation),
    /// center (the middle half of the image, each side), left (the left half); one edit
    /// case per value, comma-separated (default: none).
    #[arg(long, value_delimiter = ',', value_parser = ["none", "center", "left"])]
    pub mask: Vec<String>,
    /// --mode edit: regenerate outside the mask instead (out-painting).
    #[arg(long)]
    pub invert_mask: bool,
}

/// One `--mode edit` case: keep the first `keep_scales` scales whole, and from there
/// regenerate under `mask` (`none`: everything).
#[derive(Debug, Clone, PartialEq)]
pub struct EditSpec {
    pub keep_scales: usize,
    pub mask: String,
    pub invert_mask: bool,
}

impl EditSpec {
    /// E.g. `variation k=2`, `inpaint center`, `outpaint left k=1`.
    pub fn label(&self) -> String {
        let k = if self.keep_scales > 0 {
            format!(" k={}", self.keep_scales)
        } else {
            String::new()
        };
        match (self.mask.as_str(), self.invert_mask) {
            ("none", _) => format!("variation k={}", self.keep_scales),
            (m, false) => format!("inpaint {m}{k}"),
            (m, true) => format!("outpaint {m}{k}"),
        }
    }

    /// The mask of a `size` x `size` image (white = regenerate), `None` for `none`.
    pub fn mask(&self, size: usize) -> Option<Mask> {
        let inside: &dyn Fn(usize, usize) -> bool = match self.mask.as_str() {
            "center" => &|x, y| {
                (size / 4..size - size / 4).contains(&x) && (size / 4..size - size / 4).contains(&y)
            },
            "left" => &|x, _| x < size / 2,
            _ => return None,
        };
        let values = (0..size * size)
            .map(|p| {
                if inside(p % size, p / size) != self.invert_mask {
                    255
                } else {
                    0
                }
            })
            .collect();
        Some(Mask { size, values })
    }
}

impl Args {
    /// The edit cases `--mode edit` measures (none in generate mode): every `--keep-scales`
    /// value with every `--mask`.
    pub fn edit_specs(&self) -> Result<Vec<EditSpec>, BenchError> {
        if self.mode != "edit" {
            if !self.keep_scales.is_empty() || !self.mask.is_empty() || self.invert_mask {
                return Err(BenchError::Usage(
                    "--keep-scales, --mask and --invert-mask describe edits: add --mode edit"
                        .into(),
                ));
            }
            return Ok(vec![]);
        }
        let keep = if self.keep_scales.is_empty() {
            vec![2]
        } else {
            self.keep_scales.clone()
        };
        let masks = if self.mask.is_empty() {
            vec!["none".to_string()]
        } else {
            self.mask.clone()
        };
        if self.invert_mask && masks.iter().all(|m| m == "none") {
            return Err(BenchError::Usage(
                "--invert-mask needs a mask (--mask center or left)".into(),
            ));
        }
        Ok(keep
            .iter()
            .flat_map(|&k| {
                masks.iter().map(move |m| EditSpec {
                    keep_scales: k,
                    mask: m.clone(),
                    invert_mask: self.invert_mask && m != "none",
                })
            })
            .collect())
    }
}

/// What can stop a benchmark (an unavailable provider does not: it is reported).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Runtime(#[from] flowar_runtime::Error),
    #[error(transparent)]
    Export(#[from] flowar_exporter::ExportError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<flowar_runtime::manifest::FormatError> for BenchError {
    fn from(e: flowar_runtime::manifest::FormatError) -> BenchError {
        BenchError::Runtime(e.into())
    }
}

impl BenchError {
    /// Whether the command line itself was at fault.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BenchError::Usage(_)
                | BenchError::Runtime(flowar_runtime::Error::BadArgument(_))
                | BenchError::Export(flowar_exporter::ExportError::BadArgument(_))
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Converts `preset` with seed-0 random weights into `cache/flowar-bench-<p>`, once.
pub fn preset_model(
    preset: &str,
    precision: Precision,
    quantize: Option<Quantize>,
    cache: &Path,
) -> Result<PathBuf, BenchError> {
    let p: Preset = preset.parse()?;
    let suffix = match (precision, quantize) {
        (Precision::F32, None) => "",
        (Precision::F16, None) => "-f16",
        (Precision::Bf16, None) => "-bf16",
        (_, Some(Quantize::Int8)) => "-int8",
    };
    let dir = cache.join(format!(
        "flowar-bench-{}{suffix}",
        preset.to_ascii_lowercase()
    ));
    // A folder cached before presets carried the VAE encoder is converted again, so that
    // `--mode edit` runs on it.
    if Manifest::load(&dir).is_ok_and(|m| m.graphs.vae_encoder.is_some()) {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache).map_err(io_err(cache))?;
    let f = RandomWeights::new(format!("preset {preset}"), 0, flowar_keys(&p.flowar()));
    let v = RandomWeights::new("preset kl16".into(), 0, vae_full_keys(&Preset::vae()));
    convert_as(
        &ConvertRequest::new(&f, &v, &dir)
            .force(dir.exists())
            .quantize(quantize),
        precision,
    )?;
    Ok(dir)
}

/// Resets the kernel's peak-RSS mark of this process (Linux `clear_refs` 5), so that
/// [`crate::peak_rss_bytes`] afterwards reports the peak since now.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// GPU memory in use on `device` according to `nvidia-smi`, when there is one.
fn gpu_memory_bytes(device: i32) -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.used",
            "--format=csv,noheader,nounits",
            &format!("--id={device}"),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(mib << 20)
}

/// The `/proc/cpuinfo` flags [`Machine::cpu_flags`] records, in this order.
const CPU_FLAGS: [&str; 11] = [
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
];

fn machine() -> Machine {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    };
    let cpu = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags = field("flags").unwrap_or_default();
    let have: Vec<&str> = flags.split_whitespace().collect();
    let cpu_flags = CPU_FLAGS
        .iter()
        .filter(|f| have.contains(f))
        .map(|f| f.to_string())
        .collect();
    Machine {
        cpu_flags,
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        os: std::env::consts::OS.to_string(),
    }
}

/// Runs the whole benchmark and writes the outputs `args` ask for.
pub fn run(args: Args) -> Result<Report, BenchError> {
    let report = match &args.from_json {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(io_err(p))?;
            serde_json::from_str(&text).map_err(|e| {
                BenchError::Usage(format!("{}: not a bench report: {e}", p.display()))
            })?
        }
        None => measure(&args)?,
    };
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("report serializes");
        std::fs::write(p, text + "\n").map_err(io_err(p))?;
    }
    let md = report.markdown();
    if let Some(p) = &args.markdown {
        std::fs::write(p, &md).map_err(io_err(p))?;
    }
    if let Some(p) = &args.plot {
        crate::plot::write_png(&report, p).map_err(io_err(p))?;
    }
    if !args.quiet {
        println!("{md}");
    }
    Ok(report)
}

fn log(args: &Args, msg: impl AsRef<str>) {
    if !args.quiet {
        eprintln!("{}", msg.as_ref());
    }
}

/// Measures without writing anything.
pub fn measure(args: &Args) -> Result<Report, BenchError> {
    if args.runs == 0 {
        return Err(BenchError::Usage("--runs must be at least 1".into()));
    }
    if args.batch.is_empty() || args.batch.contains(&0) {
        return Err(BenchError::Usage(
            "--batch needs positive batch sizes".into(),
        ));
    }
    let providers: Vec<Provider> = args
        .providers
        .iter()
        .map(|s| s.trim().parse::<Provider>())
        .collect::<Result<_, _>>()?;
    if providers.is_empty() {
        return Err(BenchError::Usage("--providers names no provider".into()));
    }
    let solver: Solver = args.solver.parse()?;
    let edits = args.edit_specs()?;
    let (dir, source) = match (&args.model, &args.preset) {
        (Some(d), _) => (d.clone(), d.display().to_string()),
        (None, Some(p)) => {
            let cache = args.cache_dir.clone().unwrap_or_else(std::env::temp_dir);
            log(
                args,
                format!(
                    "preparing preset {p} (random weights) in {}",
                    cache.display()
                ),
            );
            (
                preset_model(
                    p,
                    args.dtype.parse()?,
                    args.quantize.as_deref().map(str::parse).transpose()?,
                    &cache,
                )?,
                format!("preset {} (random weights)", p.to_ascii_lowercase()),
            )
        }
        (None, None) => {
            return Err(BenchError::Usage(
                "give a model folder (--model DIR) or a preset (--preset s|l|h)".into(),
            ))
        }
    };
    let m = Manifest::load(&dir)?;
    if !edits.is_empty() {
        if m.graphs.vae_encoder.is_none() {
            return Err(BenchError::Usage(format!(
                "--mode edit needs a VAE encoder, and {} has none (vae_encoder.onnx): convert \
                 again with a VAE checkpoint that holds its encoder",
                dir.display()
            )));
        }
        if let Some(e) = edits.iter().find(|e| e.keep_scales > m.scales.len()) {
            return Err(BenchError::Usage(format!(
                "--keep-scales {} exceeds the model's {} scales {:?}",
                e.keep_scales,
                m.scales.len(),
                m.scales
            )));
        }
    }
    let sampler = Request::with_defaults(&m).with_sampler(args.cfg, args.guidance, None);
    let sampler = match &args.steps {
        Some(s) => sampler.with_steps(s),
        None => sampler,
    };
    let (steps, cfg, guidance) = (sampler.steps, sampler.cfg, sampler.guidance);
    let backend = args
        .engine
        .backend_options(args.batch.iter().copied().max())?;
    let g = &m.graphs;
    let a = &m.architecture;
    let model = ModelInfo {
        name: m.name.clone(),
        source,
        model_hash: m.model_hash.clone(),
        parameters: g.ar_step.parameters + g.flow_head.parameters + g.vae_decoder.parameters,
        scales: m.scales.clone(),
        ar_width: a.ar.width,
        ar_depth: a.ar.encoder_depth + a.ar.decoder_depth,
        flow_kind: match a.flow.kind {
            FlowKind::Spatial => "spatial",
            FlowKind::Cross => "cross",
        }
        .into(),
        flow_width: a.flow.width,
        flow_depth: a.flow.depth,
        image_size: m.image_size,
        dtype: m.dtype.clone(),
        quantization: m.quantization.clone(),
    };
    let settings = Settings {
        steps,
        scale_steps: sampler.scale_steps.clone(),
        cfg,
        guidance,
        solver: solver.name().into(),
        seed: args.seed,
        warmup: args.warmup,
        runs: args.runs,
        batches: args.batch.clone(),
        threads: args.engine.threads,
        mode: args.mode.clone(),
        edit: (!edits.is_empty()).then(|| EditSettings {
            keep_scales: dedup(edits.iter().map(|e| e.keep_scales)),
            masks: dedup(edits.iter().map(|e| e.mask.clone())),
            invert_mask: args.invert_mask,
            seed: edit_seed(args.seed),
        }),
    };
    let mut reports = Vec::new();
    for &p in &providers {
        log(args, format!("{}: loading", p.name()));
        let r = match bench_provider(args, p, &dir, &m, &backend, &settings, solver, &edits) {
            Ok(r) => r,
            Err(e) => ProviderReport {
                provider: p.name().into(),
                available: false,
                reason: Some(e.to_string()),
                load_s: None,
                encoder_provider: None,
                batches: vec![],
            },
        };
        if let Some(reason) = &r.reason {
            log(args, format!("{}: not available: {reason}", p.name()));
        }
        reports.push(r);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Report {
        tool: "flowar bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        date: civil_date(now),
        machine: machine(),
        model,
        settings: settings.clone(),
        providers: reports,
    })
}

/// The edits' noise seed: another draw than the sources', so that a variation is one.
fn edit_seed(seed: u64) -> u64 {
    seed.wrapping_add(1)
}

fn dedup<T: PartialEq>(xs: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for x in xs {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// An edit plan's skipped scales and regenerated tokens per scale.
type PlanSummary = (Vec<usize>, Vec<usize>);

/// One timed run: the sampler's stage times, the encoder's (edits), end to end, and the
/// wall time per scale.
struct Run {
    times: StageTimes,
    encoder: Option<f64>,
    total: f64,
    scale_s: Vec<f64>,
}

/// Runs the sampler once, marking when each scale's last solver step reports: the wall
/// time per scale is from one mark to the next (scale 0 from the call), so scale `i` holds
/// its AR step, its ODE (flow head, solver step, forcing) and the upsampling of scale
/// `i - 1`'s tokens. A skipped scale (nothing to regenerate) reports its steps at once.
fn sample(
    pipe: &mut Pipeline,
    req: &Request,
    n_scales: usize,
) -> Result<(flowar_runtime::Output, Vec<f64>), BenchError> {
    let mut marks: Vec<Option<Instant>> = vec![None; n_scales];
    let start = Instant::now();
    let out = pipe.generate(req, &mut |p| {
        if p.step == p.steps {
            if let Some(m) = marks.get_mut(p.scale) {
                *m = Some(Instant::now());
            }
        }
        true
    })?;
    let mut prev = start;
    let scale_s = marks
        .iter()
        .map(|m| match m {
            Some(t) => {
                let d = t.duration_since(prev).as_secs_f64();
                prev = *t;
                d
            }
            None => 0.0,
        })
        .collect();
    Ok((out, scale_s))
}

/// Edits `sources` (the batch's generated images) as `spec` says: encoder, plan, then the
/// teacher-forced sampler, timed from the images to the edited images.
fn run_edit(
    pipe: &mut Pipeline,
    m: &Manifest,
    base: &Request,
    sources: &[RgbImage],
    spec: &EditSpec,
) -> Result<(Run, PlanSummary), BenchError> {
    let masks: Vec<Option<Mask>> = sources.iter().map(|_| spec.mask(m.image_size)).collect();
    let rows: Vec<usize> = (0..sources.len()).collect();
    let t = Instant::now();
    let tokens = pipe.encode(sources)?;
    let encoder = t.elapsed().as_secs_f64();
    let plan = EditPlan::for_rows(&tokens, &masks, spec.keep_scales, &rows, m)?;
    let req = base.clone().with_edit(Some(plan));
    let (out, scale_s) = sample(pipe, &req, m.scales.len())?;
    let total = t.elapsed().as_secs_f64();
    let plan = req.edit.as_deref().expect("an edit");
    let skipped = (0..m.scales.len())
        .filter(|&k| plan.scale(k).all_known())
        .collect();
    Ok((
        Run {
            times: out.times,
            encoder: Some(encoder),
            total,
            scale_s,
        },
        (skipped, plan.regenerated_per_scale()),
    ))
}

/// What every entry of one provider and batch shares.
struct BatchCommon<'a> {
    m: &'a Manifest,
    b: usize,
    s: &'a Settings,
    peak: Option<u64>,
    gpu_memory: Option<u64>,
    calibration: &'a crate::calibrate::Calibration,
}

fn batch_report(
    c: &BatchCommon,
    runs: &[Run],
    fc: &FlopCount,
    encoder_flops: Option<f64>,
) -> BatchReport {
    let b = c.b;
    let stat = |f: &dyn Fn(&Run) -> f64| Stat::of(&runs.iter().map(f).collect::<Vec<_>>());
    let total = fc.total() + encoder_flops.unwrap_or(0.0);
    let gflops = stat(&|r| total / r.total / 1e9);
    let calib = c.calibration.best_gflops.max(f64::MIN_POSITIVE);
    let n_scales = c.m.scales.len();
    BatchReport {
        batch: b,
        task: "generate".into(),
        edit: None,
        runs: c.s.runs,
        encoder_s: encoder_flops
            .is_some()
            .then(|| stat(&|r| r.encoder.unwrap_or(0.0))),
        ar_s: stat(&|r| r.times.ar.as_secs_f64()),
        ar_per_scale_s: (0..n_scales)
            .map(|i| {
                stat(&|r| {
                    r.times
                        .ar_per_scale
                        .get(i)
                        .map(Duration::as_secs_f64)
                        .unwrap_or(0.0)
                })
            })
            .collect(),
        scale_s: (0..n_scales)
            .map(|i| stat(&|r| r.scale_s.get(i).copied().unwrap_or(0.0)))
            .collect(),
        flow_s: stat(&|r| r.times.flow.as_secs_f64()),
        flow_calls: runs[0].times.flow_calls,
        flow_per_call_ms: stat(&|r| {
            1e3 * r.times.flow.as_secs_f64() / r.times.flow_calls.max(1) as f64
        }),
        solver_s: stat(&|r| r.times.solver.as_secs_f64()),
        upsample_s: stat(&|r| r.times.upsample.as_secs_f64()),
        vae_s: stat(&|r| r.times.vae.as_secs_f64()),
        other_s: stat(&|r| {
            let st = &r.times;
            r.total
                - r.encoder.unwrap_or(0.0)
                - (st.ar + st.flow + st.solver + st.upsample + st.vae).as_secs_f64()
        }),
        total_s: stat(&|r| r.total),
        seconds_per_image: stat(&|r| r.total / b as f64),
        images_per_second: stat(&|r| b as f64 / r.total),
        peak_rss_bytes: c.peak,
        gpu_memory_bytes: c.gpu_memory,
        flops: Flops {
            ar: fc.ar(),
            ar_per_scale: fc.ar_per_scale.clone(),
            flow: fc.flow(),
            flow_per_scale: fc.flow_per_scale.clone(),
            flow_calls: fc.flow_calls_per_scale.iter().sum(),
            guided_flow_calls: fc.guided_calls_per_scale.iter().sum(),
            vae: fc.vae,
            encoder: encoder_flops,
            total,
            per_image: total / b as f64,
        },
        efficiency: gflops.scaled(1.0 / calib),
        gflops,
        calibration: c.calibration.clone(),
        vs_generate: None,
    }
}

/// An edit's runs against the generation's, run `r` with run `r`.
fn vs_generate(
    b: usize,
    gen: &BatchReport,
    gen_runs: &[Run],
    edit: &BatchReport,
    runs: &[Run],
    skipped: &[usize],
) -> VsGenerate {
    let per = 1.0 / b as f64;
    // What the generation spent at the scales the edit skips, past their AR steps (which
    // the edit runs too): its ODEs there, and the upsampling into them.
    let at_skipped = |r: &Run| {
        skipped
            .iter()
            .map(|&k| {
                r.scale_s.get(k).copied().unwrap_or(0.0)
                    - r.times
                        .ar_per_scale
                        .get(k)
                        .map_or(0.0, Duration::as_secs_f64)
            })
            .sum::<f64>()
    };
    let of_runs = |f: &dyn Fn(&Run) -> f64| Stat::of(&gen_runs.iter().map(f).collect::<Vec<_>>());
    let gen_at_skipped = of_runs(&|r| at_skipped(r) * per);
    let gen_skipped_share = of_runs(&|r| at_skipped(r) / r.total.max(f64::MIN_POSITIVE));
    let paired = |f: &dyn Fn(&Run) -> f64| {
        Stat::of(
            &gen_runs
                .iter()
                .zip(runs)
                .map(|(g, e)| f(e) / f(g).max(f64::MIN_POSITIVE))
                .collect::<Vec<_>>(),
        )
    };
    VsGenerate {
        generate_flow_calls: gen.flow_calls,
        flow_calls: edit.flow_calls,
        generate_flow_s_per_image: gen.flow_s.scaled(per),
        flow_s_per_image: edit.flow_s.scaled(per),
        flow_ratio: paired(&|r| r.times.flow.as_secs_f64()),
        flow_flops_ratio: edit.flops.flow / gen.flops.flow.max(f64::MIN_POSITIVE),
        generate_seconds_per_image: gen.seconds_per_image,
        seconds_per_image: edit.seconds_per_image,
        total_ratio: paired(&|r| r.total),
        generate_s_per_image_at_skipped: gen_at_skipped,
        generate_share_at_skipped: gen_skipped_share,
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_provider(
    args: &Args,
    p: Provider,
    dir: &Path,
    m: &Manifest,
    backend: &BackendOptions,
    s: &Settings,
    solver: Solver,
    edits: &[EditSpec],
) -> Result<ProviderReport, BenchError> {
    let opts = PipelineOptions {
        provider: ProviderChoice::Named(p),
        backend: backend.clone(),
    };
    reset_peak_rss();
    let mut pipe = Pipeline::load(dir, &opts)?;
    let load_s = pipe.load_time().as_secs_f64();
    let gpu = matches!(p, Provider::Cuda | Provider::TensorRt);
    let mut batches = Vec::new();
    for &b in &s.batch_sizes() {
        log(args, format!("{}: batch {b}: calibrating matmul", p.name()));
        let calibration = calibrate(
            p,
            backend,
            &model_shapes(m, b, s.cfg),
            &m.dtype,
            Duration::from_secs_f64(args.calibration_s.max(0.0)),
        )?;
        let req = Request::with_defaults(m)
            .with_sampler(Some(s.cfg), Some(s.guidance), Some(s.steps))
            .with_scale_steps(s.scale_steps.clone())
            .with_images((0..b).map(|i| i % m.num_classes).collect(), 0)?
            .with_seed(s.seed)
            .with_solver(solver);
        pipe.validate(&req)?;
        let edit_req = req.clone().with_seed(edit_seed(s.seed));
        // The generation's images, the edits' sources (the same every run: seeded).
        let mut sources: Option<Vec<RgbImage>> = None;
        let mut plans: Vec<Option<PlanSummary>> = vec![None; edits.len()];
        for w in 0..s.warmup {
            log(args, format!("{}: batch {b}: warm-up {}", p.name(), w + 1));
            let out = pipe.generate(&req, &mut |_| true)?;
            let src = sources.get_or_insert(out.images);
            for e in edits {
                run_edit(&mut pipe, m, &edit_req, src, e)?;
            }
        }
        reset_peak_rss();
        let mut gen_runs: Vec<Run> = Vec::new();
        let mut edit_runs: Vec<Vec<Run>> = (0..edits.len()).map(|_| Vec::new()).collect();
        for r in 0..s.runs {
            let t = Instant::now();
            let (out, scale_s) = sample(&mut pipe, &req, m.scales.len())?;
            let total = t.elapsed().as_secs_f64();
            log(
                args,
                format!("{}: batch {b}: run {}: {total:.3} s", p.name(), r + 1),
            );
            gen_runs.push(Run {
                times: out.times,
                encoder: None,
                total,
                scale_s,
            });
            let src = sources.get_or_insert(out.images);
            for (i, e) in edits.iter().enumerate() {
                let (run, plan) = run_edit(&mut pipe, m, &edit_req, src, e)?;
                log(
                    args,
                    format!(
                        "{}: batch {b}: run {}: {}: {:.3} s",
                        p.name(),
                        r + 1,
                        e.label(),
                        run.total
                    ),
                );
                edit_runs[i].push(run);
                plans[i] = Some(plan);
            }
        }
        let common = BatchCommon {
            m,
            b,
            s,
            peak: crate::peak_rss_bytes(),
            gpu_memory: if gpu {
                gpu_memory_bytes(backend.device_id)
            } else {
                None
            },
            calibration: &calibration,
        };
        let fc = generation_flops(m, b, s.cfg, s.guidance, &|i| req.steps_at(i), solver);
        let gen = batch_report(&common, &gen_runs, &fc, None);
        let mut entries = Vec::with_capacity(edits.len());
        for ((e, runs), plan) in edits.iter().zip(&edit_runs).zip(&plans) {
            let (skipped, regenerated) = plan.clone().expect("runs >= 1");
            let efc = fc.clone().without_flow_at(&skipped);
            let mut r = batch_report(
                &common,
                runs,
                &efc,
                Some(vae_encoder_flops(m, b).unwrap_or(0.0)),
            );
            r.task = "edit".into();
            r.edit = Some(EditCase {
                label: e.label(),
                keep_scales: e.keep_scales,
                mask: e.mask.clone(),
                invert_mask: e.invert_mask,
                skipped_scales: skipped.clone(),
                regenerated_tokens: regenerated,
            });
            r.vs_generate = Some(vs_generate(b, &gen, &gen_runs, &r, runs, &skipped));
            entries.push(r);
        }
        batches.push(gen);
        batches.extend(entries);
    }
    Ok(ProviderReport {
        provider: p.name().into(),
        available: true,
        reason: None,
        load_s: Some(load_s),
        encoder_provider: (!edits.is_empty()).then(|| p.encoder_provider().name().to_string()),
        batches,
    })
}

impl Settings {
    fn batch_sizes(&self) -> Vec<usize> {
        self.batches.clone()
    }
}
