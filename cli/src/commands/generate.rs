//! `flowar generate`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use flowar_runtime::image::{labelled_grid, save_png, write_atomic, RgbImage};
use flowar_runtime::sample_set;
use flowar_runtime::sampler::noise;
use flowar_runtime::{Request, Solver, StageTimes};
use indicatif::{ProgressBar, ProgressStyle};

use super::{demo_model, BackendArgs, CliError, CliResult, SamplerArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder from `flowar convert` (default: the bundled shapes10 demo, converted on first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Class ids or names; images cycle through them (default: every class).
    #[arg(long = "class", num_args = 1..)]
    pub classes: Vec<String>,
    /// Number of images (default: one per listed class).
    #[arg(long)]
    pub count: Option<usize>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[arg(long, default_value = "euler", value_parser = ["euler", "heun"])]
    pub solver: String,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Replay recorded starting noise (`noise.s{i}` tensors of shape [rows, N_i, C]).
    #[arg(long)]
    pub noise_file: Option<PathBuf>,
    /// Only produce images whose index = I mod N, e.g. `--shard 0/4`; `auto` reads I and N
    /// from a SLURM job array (SLURM_ARRAY_TASK_ID/_COUNT) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX with FLOWAR_SHARD_COUNT).
    #[arg(long)]
    pub shard: Option<String>,
    /// Write one PNG per image (`NNNNNN.png`) and `run.json` here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a labelled grid of all images here (default when --out is not given: flowar-grid.png).
    #[arg(long)]
    pub grid: Option<PathBuf>,
}

/// The model folder to use, converting the bundled demo on first use. `need_encoder`:
/// also redo a cached demo conversion made before the VAE encoder was exported.
pub(crate) fn model_dir(model: Option<&Path>, need_encoder: bool) -> CliResult<PathBuf> {
    if let Some(m) = model {
        return Ok(m.to_path_buf());
    }
    let demo = demo_model().ok_or_else(|| {
        CliError::Usage("no --model given and the bundled demo (models/shapes10) was not found; run from the repository".into())
    })?;
    // The conversion is this tool's own cache: redo it on first use, and when a cached
    // conversion no longer loads (an older flowar wrote it), saying why.
    let reason = if !demo.converted.join("manifest.json").is_file() {
        Some("first use".to_string())
    } else {
        match flowar_runtime::manifest::Manifest::load(&demo.converted) {
            Err(e) => Some(format!("the cached conversion is unusable: {e}")),
            Ok(m) if need_encoder && m.graphs.vae_encoder.is_none() => {
                Some("the cached conversion has no VAE encoder, which editing needs".into())
            }
            Ok(_) => None,
        }
    };
    if let Some(reason) = reason {
        eprintln!(
            "converting the bundled demo model {} ({reason}; cached in {}) ...",
            demo.dir.display(),
            demo.converted.display()
        );
        let f = flowar_exporter::checkpoint::Checkpoint::open(&demo.dir.join("flowar.pth"))?;
        let v = flowar_exporter::checkpoint::Checkpoint::open(&demo.dir.join("vae.ckpt"))?;
        let meta = flowar_exporter::convert::ModelMeta::load(&demo.dir.join("meta.json"))?;
        flowar_exporter::convert::convert(
            &flowar_exporter::convert::ConvertRequest::from_checkpoints(
                &f,
                &demo.dir.join("flowar.pth"),
                &v,
                &demo.dir.join("vae.ckpt"),
                &demo.converted,
            )
            .meta(meta)
            .force(true),
        )?;
    }
    Ok(demo.converted)
}

/// Folders this run created, removed again (only while empty) when the run fails, so a
/// failed or interrupted `generate` leaves no output path behind.
#[derive(Default)]
pub(crate) struct CreatedDirs(Vec<PathBuf>);

impl CreatedDirs {
    /// The run succeeded: keep everything.
    pub(crate) fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        // Deepest first; `remove_dir` refuses a folder that holds anything.
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Fails early if `dir` cannot be written; records the folders it had to create.
pub(crate) fn ensure_writable(dir: &Path, created: &mut CreatedDirs) -> CliResult {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir).map_err(|e| flowar_runtime::Error::io(dir, e))?;
    created.0.extend(missing.into_iter().rev());
    let probe = dir.join(format!(".flowar-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| flowar_runtime::Error::io(dir, e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Where the grid goes: `--grid`, else `default` when there is no `--out` either (the
/// run must write something), else nowhere.
pub(crate) fn grid_path(grid: Option<&Path>, out: Option<&Path>, default: &str) -> Option<PathBuf> {
    match (grid, out) {
        (Some(g), _) => Some(g.to_path_buf()),
        (None, None) => Some(PathBuf::from(default)),
        (None, Some(_)) => None,
    }
}

/// Makes sure a run's outputs can be written before any work: the `--out` folder (with
/// the temporaries a killed run left in it removed) and the grid's folder. The folders it
/// created are removed again if the run fails.
pub(crate) fn prepare_outputs(out: Option<&Path>, grid: Option<&Path>) -> CliResult<CreatedDirs> {
    let mut created = CreatedDirs::default();
    if let Some(out) = out {
        ensure_writable(out, &mut created)?;
        // A run killed outright (SIGKILL, a lost machine) left the temporary of the image
        // it was writing; its images before that are whole, and this run rewrites them all.
        let stale = sample_set::sweep_stale(out)?;
        if !stale.is_empty() {
            eprintln!(
                "removed {} temporary file(s) that an interrupted run left in {}",
                stale.len(),
                out.display()
            );
        }
    }
    if let Some(g) = grid {
        let parent = g
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        ensure_writable(parent, &mut created)?;
    }
    Ok(created)
}

pub(crate) fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

pub fn run(a: Args) -> CliResult {
    if a.sampler.batch_size == 0 {
        return Err(CliError::Usage("--batch-size must be at least 1".into()));
    }
    let shard = a
        .shard
        .as_deref()
        .map(|s| crate::shard::parse(s, |k| std::env::var(k).ok()))
        .transpose()?;
    let solver: Solver = a.solver.parse()?;
    let options = a.backend.options_for(Some(a.sampler.batch_size))?;
    let model_path = model_dir(a.model.as_deref(), false)?;
    let grid_path = grid_path(a.grid.as_deref(), a.out.as_deref(), "flowar-grid.png");
    let created = prepare_outputs(a.out.as_deref(), grid_path.as_deref())?;

    let mut pipe = super::load_pipeline(&model_path, &options)?;
    let m = pipe.manifest().clone();
    eprintln!(
        "provider: {} ({})",
        pipe.provider().provider.name(),
        pipe.provider().reason
    );
    let class_list: Vec<usize> = if a.classes.is_empty() {
        // Every named class (the trained ones), else every class.
        (0..if m.class_names.is_empty() {
            m.num_classes
        } else {
            m.class_names.len()
        })
            .collect()
    } else {
        a.classes
            .iter()
            .map(|c| m.class_id(c))
            .collect::<Result<_, _>>()?
    };
    let count = a.count.unwrap_or(class_list.len());
    if count == 0 {
        return Err(CliError::Usage("--count must be at least 1".into()));
    }
    // The model's sampler defaults with what the command line set; every batch is this
    // request for other images.
    let base = Request::with_defaults(&m)
        .with_sampler(a.sampler.cfg, a.sampler.guidance, None)
        .with_seed(a.sampler.seed)
        .with_solver(solver);
    let base = match &a.sampler.steps {
        Some(s) => base.with_steps(s),
        None => base,
    };
    let (cfg, guidance) = (base.cfg, base.guidance);
    let indices: Vec<u64> = (0..count as u64)
        .filter(|&k| shard.is_none_or(|s| s.has(k)))
        .collect();
    let class_of = |k: u64| class_list[k as usize % class_list.len()];

    let recorded = match &a.noise_file {
        Some(p) => {
            let rows = if cfg > 1.0 {
                2 * indices.len()
            } else {
                indices.len()
            };
            if shard.is_some() {
                return Err(CliError::Usage(
                    "--noise-file cannot be combined with --shard".into(),
                ));
            }
            Some(noise::load_recorded(
                p,
                "noise.",
                rows,
                &m.scales,
                m.latent_channels,
            )?)
        }
        None => None,
    };
    let batch_size = if recorded.is_some() {
        indices.len()
    } else {
        a.sampler.batch_size
    };
    // Validate once, before any work, with the first batch's shape.
    let mk = |ix: &[u64], noise: Option<Vec<Vec<f32>>>| {
        base.clone().with_indices(ix, class_of).with_noise(noise)
    };
    if let Some(first) = indices.chunks(batch_size).next() {
        pipe.validate(&mk(first, recorded.clone()))?;
    }

    let n_scales = m.scales.len();
    let grid_steps: usize = (0..n_scales)
        .map(|i| flowar_runtime::sampler::schedule::time_grid(base.steps_at(i)).len() - 1)
        .sum();
    let total_ticks = (indices.len().div_ceil(batch_size) * grid_steps) as u64;
    let bar = ProgressBar::new(total_ticks);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let mut times = StageTimes::default();
    let mut images: Vec<(u64, RgbImage)> = Vec::new();
    for (bi, chunk) in indices.chunks(batch_size).enumerate() {
        let req = mk(chunk, recorded.clone());
        let out = pipe.generate(&req, &mut |p| {
            bar.inc(1);
            bar.set_message(format!(
                "batch {} scale {}/{} step {}/{}",
                bi + 1,
                p.scale + 1,
                p.scales,
                p.step,
                p.steps
            ));
            // Ctrl-C: stop at the next step (Error::Cancelled); PNGs already written are
            // complete, and run.json and the grid are not written.
            !crate::interrupted()
        })?;
        times.add(&out.times);
        if let Some(dir) = &a.out {
            sample_set::save_images(dir, &m, &req, &out.images)?;
        }
        if grid_path.is_some() {
            images.extend(chunk.iter().copied().zip(out.images));
        }
    }
    bar.finish_and_clear();
    let total = started.elapsed();
    let n = indices.len();
    eprintln!(
        "generated {n} image(s) in {:.2}s ({:.3}s/image) on {}: AR {:.2}s, flow head {:.2}s ({} calls), solver steps {:.3}s, upsample {:.3}s, VAE {:.2}s",
        secs(total),
        secs(total) / n.max(1) as f64,
        pipe.provider().provider.name(),
        secs(times.ar),
        secs(times.flow),
        times.flow_calls,
        secs(times.solver),
        secs(times.upsample),
        secs(times.vae)
    );
    if let Some(g) = &grid_path {
        let labels: Vec<String> = images
            .iter()
            .map(|(k, _)| {
                let c = class_of(*k);
                m.class_names
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| format!("class {c}"))
            })
            .collect();
        let imgs: Vec<RgbImage> = images.into_iter().map(|(_, i)| i).collect();
        let zoom = (96 / m.image_size).max(1);
        let columns = if n <= 10 {
            n
        } else {
            (n as f64).sqrt().ceil() as usize
        };
        save_png(
            g,
            &labelled_grid(&imgs, &labels, columns, zoom),
            &[("flowar:model".into(), m.name.clone())],
        )?;
        println!("wrote grid {}", g.display());
    }
    if let Some(dir) = &a.out {
        let run = serde_json::json!({
            "model": model_path.display().to_string(),
            "model_name": m.name,
            "model_hash": m.model_hash,
            "dtype": m.dtype,
            "provider": pipe.provider().provider.name(),
            "provider_reason": pipe.provider().reason,
            "classes": indices.iter().map(|&k| class_of(k)).collect::<Vec<_>>(),
            "indices": indices,
            "count": count,
            "shard": shard.map(|s| s.to_string()),
            "seed": a.sampler.seed,
            "cfg": cfg,
            "guidance": guidance,
            // A number, or one per scale when a schedule was given.
            "steps": base.scale_steps.as_ref().map_or(serde_json::json!(base.steps), |v| serde_json::json!(v)),
            "solver": solver.name(),
            "batch_size": batch_size,
            "noise_file": a.noise_file,
            "timings_s": {
                "load": secs(pipe.load_time()),
                "total": secs(total),
                "ar": secs(times.ar),
                "flow_head": secs(times.flow),
                "flow_head_calls": times.flow_calls,
                "solver_step": secs(times.solver),
                "upsample": secs(times.upsample),
                "vae": secs(times.vae),
            },
        });
        write_atomic(
            &dir.join("run.json"),
            serde_json::to_string_pretty(&run).expect("json").as_bytes(),
        )?;
        println!("wrote {n} image(s) and run.json to {}", dir.display());
    }
    created.keep();
    Ok(())
}
