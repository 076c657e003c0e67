//! The benchmark engine behind `flowar bench`: load time, per-stage latency, throughput,
//! peak memory and achieved GFLOP/s against a same-run matmul calibration, per provider
//! and batch size.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowar_exporter::convert::{convert_as, ConvertRequest, Precision};
use flowar_exporter::preset::{flowar_keys, vae_keys, Preset, RandomWeights};
use flowar_exporter::quantize::Quantize;
use flowar_runtime::backend::{BackendOptions, Provider};
use flowar_runtime::manifest::{FlowKind, Manifest};
use flowar_runtime::{Pipeline, PipelineOptions, ProviderChoice, Request, Solver, StageTimes};

use crate::calibrate::{calibrate, model_shapes};
use crate::flops::generation_flops;
use crate::report::{
    civil_date, BatchReport, Flops, Machine, ModelInfo, ProviderReport, Report, Settings, Stat,
};

/// `flowar bench` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A converted model folder.
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
    if Manifest::load(&dir).is_ok() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache).map_err(io_err(cache))?;
    let f = RandomWeights::new(format!("preset {preset}"), 0, flowar_keys(&p.flowar()));
    let v = RandomWeights::new("preset kl16".into(), 0, vae_keys(&Preset::vae()));
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

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    Machine {
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
    };
    let mut reports = Vec::new();
    for &p in &providers {
        log(args, format!("{}: loading", p.name()));
        let r = match bench_provider(args, p, &dir, &m, &backend, &settings, solver) {
            Ok(r) => r,
            Err(e) => ProviderReport {
                provider: p.name().into(),
                available: false,
                reason: Some(e.to_string()),
                load_s: None,
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

fn bench_provider(
    args: &Args,
    p: Provider,
    dir: &Path,
    m: &Manifest,
    backend: &BackendOptions,
    s: &Settings,
    solver: Solver,
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
        for w in 0..s.warmup {
            log(args, format!("{}: batch {b}: warm-up {}", p.name(), w + 1));
            pipe.generate(&req, &mut |_| true)?;
        }
        reset_peak_rss();
        let mut times: Vec<(StageTimes, f64)> = Vec::new();
        for r in 0..s.runs {
            let t = Instant::now();
            let out = pipe.generate(&req, &mut |_| true)?;
            let total = t.elapsed().as_secs_f64();
            log(
                args,
                format!("{}: batch {b}: run {}: {total:.3} s", p.name(), r + 1),
            );
            times.push((out.times, total));
        }
        let peak = crate::peak_rss_bytes();
        let fc = generation_flops(m, b, s.cfg, s.guidance, &|i| req.steps_at(i), solver);
        let stat = |f: &dyn Fn(&StageTimes, f64) -> f64| {
            Stat::of(&times.iter().map(|(st, t)| f(st, *t)).collect::<Vec<_>>())
        };
        let total = fc.total();
        let gflops = stat(&|_, t| total / t / 1e9);
        let calib = calibration.best_gflops.max(f64::MIN_POSITIVE);
        let n_scales = m.scales.len();
        batches.push(BatchReport {
            batch: b,
            runs: s.runs,
            ar_s: stat(&|st, _| st.ar.as_secs_f64()),
            ar_per_scale_s: (0..n_scales)
                .map(|i| {
                    stat(&|st, _| {
                        st.ar_per_scale
                            .get(i)
                            .map(Duration::as_secs_f64)
                            .unwrap_or(0.0)
                    })
                })
                .collect(),
            flow_s: stat(&|st, _| st.flow.as_secs_f64()),
            flow_calls: times[0].0.flow_calls,
            flow_per_call_ms: stat(&|st, _| {
                1e3 * st.flow.as_secs_f64() / st.flow_calls.max(1) as f64
            }),
            solver_s: stat(&|st, _| st.solver.as_secs_f64()),
            upsample_s: stat(&|st, _| st.upsample.as_secs_f64()),
            vae_s: stat(&|st, _| st.vae.as_secs_f64()),
            other_s: stat(&|st, t| {
                t - (st.ar + st.flow + st.solver + st.upsample + st.vae).as_secs_f64()
            }),
            total_s: stat(&|_, t| t),
            seconds_per_image: stat(&|_, t| t / b as f64),
            images_per_second: stat(&|_, t| b as f64 / t),
            peak_rss_bytes: peak,
            gpu_memory_bytes: if gpu {
                gpu_memory_bytes(backend.device_id)
            } else {
                None
            },
            flops: Flops {
                ar: fc.ar(),
                ar_per_scale: fc.ar_per_scale.clone(),
                flow: fc.flow(),
                flow_per_scale: fc.flow_per_scale.clone(),
                flow_calls: fc.flow_calls_per_scale.iter().sum(),
                guided_flow_calls: fc.guided_calls_per_scale.iter().sum(),
                vae: fc.vae,
                total,
                per_image: total / b as f64,
            },
            efficiency: gflops.scaled(1.0 / calib),
            gflops,
            calibration,
        });
    }
    Ok(ProviderReport {
        provider: p.name().into(),
        available: true,
        reason: None,
        load_s: Some(load_s),
        batches,
    })
}

impl Settings {
    fn batch_sizes(&self) -> Vec<usize> {
        self.batches.clone()
    }
}
