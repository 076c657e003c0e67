//! `flowar verify`.

use std::path::PathBuf;

use flowar_runtime::verify::{self, PipeSettings, Reference, Tolerances};

use super::{BackendArgs, CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    pub model: PathBuf,
    /// Reference tensors laid out like the fixtures' expected.safetensors.
    #[arg(long)]
    pub reference: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Max abs error for flow head, AR and upsampling cases (default: the manifest's bound,
    /// 1e-4 for float32 graphs).
    #[arg(long)]
    pub tol: Option<f32>,
    /// Max abs error for the VAE float image (default: the manifest's, 1e-3 for float32).
    #[arg(long)]
    pub vae_tol: Option<f32>,
    /// Max abs error for pipe.tokens (default: 4x the reference's own float64-vs-float32
    /// difference from config.json beside the reference, and at least 1e-3). The edit
    /// cases (edit.{case}.tokens) get the same rule with their own per-case drift; the
    /// encoder's tokens are held to 2e-4 (see docs/editing.md), edited pixels to 99.8% identical, 1 level.
    #[arg(long)]
    pub pipe_tol: Option<f32>,
    /// Largest allowed u8 difference in pipe.image_u8.
    #[arg(long, default_value_t = 2)]
    pub pipe_levels: u8,
    /// Share of pipe.image_u8 values that must be identical.
    #[arg(long, default_value_t = 0.99)]
    pub pipe_identical: f64,
    /// Pipeline settings of the pipe.* case (default: config.json beside the reference).
    #[arg(long)]
    pub cfg: Option<f64>,
    #[arg(long)]
    pub guidance: Option<f64>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: Args) -> CliResult {
    let reference = Reference::load(&a.reference)?;
    let config: Option<serde_json::Value> = a
        .reference
        .parent()
        .map(|p| p.join("config.json"))
        .filter(|p| p.is_file())
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    let cget = |k: &str| {
        config
            .as_ref()
            .and_then(|c| c.get(k))
            .and_then(|v| v.as_f64())
    };
    let settings = match (
        a.cfg.or(cget("cfg")),
        a.guidance.or(cget("guidance")),
        a.steps.or(cget("num_steps").map(|s| s as usize)),
    ) {
        (Some(cfg), Some(guidance), Some(steps)) => Some(PipeSettings {
            cfg,
            guidance,
            steps,
            labels: config
                .as_ref()
                .and_then(|c| c.get("labels"))
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default(),
            keep_scales: cget("keep_scales").map(|k| k as usize),
        }),
        _ => None,
    };
    let pipe_tol = a.pipe_tol.unwrap_or_else(|| {
        cget("float64_vs_float32_tokens_max_abs_diff")
            .map(|d| (4.0 * d as f32).max(1e-3))
            .unwrap_or(1e-3)
    });
    // The editing fixtures record one drift per case: each edit case gets its own bound.
    let edit_tokens = config
        .as_ref()
        .and_then(|c| c.get("float64_vs_float32_tokens_max_abs_diff"))
        .and_then(|d| d.as_object())
        .map(|cases| {
            cases
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), (4.0 * v.as_f64()? as f32).max(1e-3))))
                .collect()
        })
        .unwrap_or_default();
    let mut pipe = super::load_pipeline(&a.model, &a.backend.options()?)?;
    // Bounds default to the ones the manifest states for its graphs' precision.
    let bounds = pipe.manifest().verify;
    let m = pipe.manifest();
    bounds
        .check(&m.dtype, m.quantization.is_some())
        .map_err(|e| CliError::Usage(format!("{}: {e}", a.model.display())))?;
    let vae = a.vae_tol.unwrap_or(bounds.vae);
    let tol = Tolerances {
        graph: a.tol.unwrap_or(bounds.graph),
        vae,
        vae_u8_levels: flowar_runtime::manifest::VerifyBounds { vae, ..bounds }.vae_u8_levels(),
        pipe_tokens: pipe_tol,
        pipe_identical: a.pipe_identical,
        pipe_u8_levels: a.pipe_levels,
        pipeline: bounds.pipeline,
        edit_tokens,
        ..Tolerances::default()
    };
    println!(
        "provider: {} ({})",
        pipe.provider().provider.name(),
        pipe.provider().reason
    );
    let results = verify::run(&mut pipe, &reference, &tol, settings.as_ref())?;
    let mut failed = 0;
    for r in &results {
        let extra = r
            .identical
            .map(|s| format!("  identical {:.4}%", s * 100.0))
            .unwrap_or_default();
        println!(
            "{:<5} {:<20} max_abs {:.3e}  max_rel {:.3e}  bound {:.1e}{extra}",
            if r.pass { "ok" } else { "FAIL" },
            r.name,
            r.max_abs,
            r.max_rel,
            r.bound
        );
        failed += (!r.pass) as usize;
    }
    if let Some(j) = &a.json {
        flowar_runtime::image::write_atomic(
            j,
            serde_json::to_string_pretty(&results)
                .expect("json")
                .as_bytes(),
        )?;
    }
    if let Some(first) = results.iter().find(|r| !r.pass) {
        return Err(CliError::Failed(format!(
            "{failed} of {} case(s) exceed their bounds; the first is `{}` (max_abs {:.3e} > bound {:.1e})",
            results.len(),
            first.name,
            first.max_abs,
            first.bound
        )));
    }
    if !bounds.pipeline && reference.has("pipe.tokens") {
        println!(
            "skip  pipe.*: this model's graphs are {}; end-to-end cases are compared for float32 graphs only",
            pipe.manifest().dtype
        );
    }
    println!("all {} case(s) within bounds", results.len());
    Ok(())
}
